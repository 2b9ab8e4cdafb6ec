"""rerank_eval: every selection method on the same eval candidates, with honest statistics."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from impetus.config import RerankParams, parse
from impetus.energy.ebm import ebm_from_dict
from impetus.energy.learned import LearnedScorers, add_learned_energies, energy_columns, join_candidates
from impetus.lm.loading import load_tokenizer
from impetus.selection.report import (
    EMBED,
    LM_PASS,
    best_method,
    evaluate_all,
    make_plots,
    markdown_report,
    mlflow_metrics,
)
from impetus.tracking import as_mlflow_metrics

logger = logging.getLogger(__name__)


def rerank_and_evaluate(
    graded_eval: pd.DataFrame,
    energies_eval: pd.DataFrame,
    hidden_eval: dict[str, Any],
    energies_eval_timing: dict[str, float],
    problems_eval: pd.DataFrame,
    base_lm: dict[str, Any],
    text_ebm: dict,
    latent_ebm: dict,
    hybrid_energy: dict,
    rerank: dict[str, Any],
) -> tuple[dict, str, pd.DataFrame, pd.DataFrame, dict[str, Figure], dict[str, Figure], dict]:
    """Score eval candidates with the learned energies, then evaluate every method."""
    rp = parse(RerankParams, rerank, "rerank_eval")
    scorers = LearnedScorers(
        text_ebm=ebm_from_dict(text_ebm),
        latent_ebm=ebm_from_dict(latent_ebm),
        hidden_source=latent_ebm.get("hidden_source", "mean"),
        hybrid=hybrid_energy["hybrid"],
    )
    df = join_candidates(graded_eval, energies_eval, hidden_eval)
    df, learned_seconds = add_learned_energies(df, problems_eval, hidden_eval, load_tokenizer(base_lm["path"]), scorers)
    cols = [*energy_columns(energies_eval), *learned_seconds]
    stage_seconds = {LM_PASS: energies_eval_timing["lm_seconds"], EMBED: energies_eval_timing["embedding_seconds"]}
    stage_seconds |= learned_seconds
    # Sampling wall time per problem: the sampler attributes each row's share of its batch time.
    sampling_spp = float(graded_eval.groupby("problem_id")["gen_seconds"].sum().mean())
    result, selections, methods = evaluate_all(
        df, cols, rp.weighted_vote, rp.tau, stage_seconds, sampling_spp, n_boot=rp.n_boot, seed=rp.seed
    )
    fig_n, fig_roc, fig_hist, curves = make_plots(df, methods, rp.curves, cols, rp.acc_vs_n_subsamples, rp.seed)
    result["accuracy_vs_n"] = {k: v.to_dict(orient="list") for k, v in curves.items()}
    result["best_method"] = best_method(result)
    result["hybrid_weights"] = hybrid_energy.get("weights", {})
    report = markdown_report(result)
    plots = {"accuracy_vs_n.png": fig_n, "roc.png": fig_roc, "energy_histograms.png": fig_hist}
    logger.info("Rerank report:\n%s", report)
    curve_rows = pd.concat([v.assign(method=k) for k, v in curves.items()], ignore_index=True)
    return (
        result, report, selections, curve_rows, plots, plots,
        as_mlflow_metrics(mlflow_metrics(result)),
    )
