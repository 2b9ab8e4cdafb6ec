"""learning_curve: the learned energies and the chosen method against the number of train-side
problems (:mod:`impetus.selection.learning_curve`), each point a refit of the scorer and a rerun of
rerank_eval's choice on a nested subset; eval is the whole eval split."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from impetus.framework.config import LearningCurveParams, MiningParams, RerankParams, ScorerParams
from impetus.framework.tracking import series_metrics
from impetus.pipelines.mining.nodes import mine_ebm_groups
from impetus.pipelines.rerank_eval.nodes import rerank_and_evaluate
from impetus.pipelines.scorer.nodes import train_scorers
from impetus.selection.learning_curve import curve_row, first_problems, nested_sizes, plot_curve, subset_split
from impetus.selection.point_cache import PointCache

logger = logging.getLogger(__name__)


def learning_curve(
    graded_train: pd.DataFrame, energies_train: pd.DataFrame, hidden_train: dict[str, Any], energies_train_timing: dict,
    problems_train: pd.DataFrame, graded_dev: pd.DataFrame, energies_dev: pd.DataFrame, hidden_dev: dict[str, Any],
    energies_dev_timing: dict, problems_dev: pd.DataFrame, graded_eval: pd.DataFrame, energies_eval: pd.DataFrame,
    hidden_eval: dict[str, Any], energies_eval_timing: dict, problems_eval: pd.DataFrame, base_lm: dict[str, Any],
    mining: MiningParams, scorer: ScorerParams, rerank_eval: RerankParams, learning_curve: LearningCurveParams,
) -> tuple[dict, pd.DataFrame, dict[str, Figure], dict]:
    """Eval accuracy of each method in ``learning_curve.methods`` and of the CV-chosen one, per size.

    Each finished point is kept under ``learning_curve.points_dir``, keyed by the inputs, settings and
    code, so a rerun after a crash (or of the same curve) refits only the points it lacks."""
    inputs = (graded_train, energies_train, hidden_train, energies_train_timing, problems_train, graded_dev,
              energies_dev, hidden_dev, energies_dev_timing, problems_dev, graded_eval, energies_eval, hidden_eval,
              energies_eval_timing, problems_eval, base_lm)
    settings = [m.model_dump(mode="json") for m in (mining, scorer, rerank_eval)]
    cache = PointCache.keyed(learning_curve.points_dir,
                             [*inputs, *settings, learning_curve.seed, list(learning_curve.methods)])
    pool = pd.concat([problems_train["problem_id"], problems_dev["problem_id"]])
    sizes = nested_sizes(learning_curve.sizes, pool.nunique())
    rows = []
    for n in tqdm(sizes, desc="learning curve", disable=not learning_curve.progress):
        def point(n: int = n) -> dict[str, Any]:
            keep = first_problems(pool, n, learning_curve.seed)
            train = subset_split(graded_train, energies_train, hidden_train, problems_train, energies_train_timing, keep)
            dev = subset_split(graded_dev, energies_dev, hidden_dev, problems_dev, energies_dev_timing, keep)
            groups, _ = mine_ebm_groups(*train[:3], *dev[:3], dev[4], problems_eval, mining, rerank_eval)
            text, latent, hybrid, *_ = train_scorers(groups, train[4], train[2], dev[4], dev[2], base_lm, scorer,
                                                     rerank_eval)
            result = rerank_and_evaluate(*train, *dev, graded_eval, energies_eval, hidden_eval, energies_eval_timing,
                                         problems_eval, base_lm, text, latent, hybrid, scorer, rerank_eval,
                                         report=False)[0]
            seconds = float(train[0]["gen_seconds"].sum() + dev[0]["gen_seconds"].sum())
            return curve_row(n, seconds, result, learning_curve.methods)

        try:
            rows.append(cache.get(n, point))
        except ValueError as err:  # too few problems for the folds or the mining: the point is left out
            logger.warning("Learning curve: no point at %d train-side problems (%s)", n, err)
            continue
        logger.info("Learning curve at %d train-side problems: chosen %s %.1f%%", n, rows[-1]["chosen"],
                    100 * rows[-1]["chosen_accuracy"])
    if cache.read:
        logger.info("Learning curve: %d of %d points read from %s (same inputs, settings and code)",
                    cache.read, len(sizes), learning_curve.points_dir)
    table = pd.DataFrame(rows)
    if not rows:
        raise ValueError(f"learning curve: no size in {sizes} could be fit (see the warnings above)")
    metrics = {"sizes": sizes, "seed": learning_curve.seed, "points": rows}
    # One MLflow series per method with the size as its step: the UI draws the curve.
    history = series_metrics("learning_curve", rows, ("chosen_accuracy", "sampling_seconds", *learning_curve.methods),
                             "n_train_problems")
    return metrics, table, {"learning_curve.png": plot_curve(table, learning_curve.methods)}, history
