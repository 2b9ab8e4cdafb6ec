"""Which layers' states the LatentEBM reads, chosen by cross-validation (``hidden_source: cv``).

Issue 24's probe found the middle layer's mean states far better than the last layer's on
ARC-Easy's choices (65.2% against 57.6% test accuracy for a linear energy), and no layer standing
out on arithmetic; the best layer is a property of the model and the task, so it is chosen per
run, on the train-side groups only. The candidates are the last layer alone (``both``: its mean
state and its last token's), each recorded layer ``k`` with it (``l<k>_both``), and all recorded
layers with it (``layer_both``). Each is fit on K-1 folds of the problems and scores the held-out
fold; the one with the highest within-problem AUROC out of fold (pair accuracy: the share of
(right, wrong) pairs of a problem ordered right, averaged over problems; what a reranker needs)
wins, ties to the earlier (smaller) one. The table is reported, so a user sees which layer carries
the signal.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from impetus.energy.recorded import LAYER_PREFIX, layer_columns
from impetus.learned.ensemble import top1_accuracy
from impetus.learned.hybrid import group_folds
from impetus.learned.models import score
from impetus.learned.train import TrainConfig, group_pair_metrics

logger = logging.getLogger(__name__)

#: ``hidden_source`` value that asks for the choice below.
CV = "cv"


def source_candidates(hidden: dict[str, Any]) -> list[str]:
    """The feature sets ``hidden_source: cv`` compares, given the recorded layers."""
    layers = [c[len(LAYER_PREFIX):] for c in layer_columns(hidden)]
    return ["both", *(f"l{k}_both" for k in layers), *(["layer_both"] if len(layers) > 1 else [])]


def choose_hidden_source(
    groups: pd.DataFrame, hidden: dict[str, Any], model_cfg: dict, train_cfg: TrainConfig, folds: int, seed: int,
) -> tuple[str, dict[str, dict[str, float]]]:
    """The candidate feature set with the best out-of-fold within-problem AUROC on ``groups``
    (mined train-side groups: problem_id, correct, hidden_row), and every candidate's
    ``{"auroc", "top1"}`` out of fold."""
    from impetus.learned.fitting import fit_latent_ebm, hidden_matrix  # fitting imports this module

    n_problems = groups["problem_id"].nunique()
    if n_problems < folds:
        raise ValueError(f"choosing the LatentEBM's layers needs at least {folds} mixed train problems, got {n_problems}")
    fold = group_folds(groups["problem_id"], folds, seed)
    quiet = replace(train_cfg, progress=False)
    table: dict[str, dict[str, float]] = {}
    for source in source_candidates(hidden):
        energy = np.full(len(groups), np.nan)
        for k in range(folds):
            model = fit_latent_ebm(groups[fold != k], hidden, source, model_cfg, quiet).model
            held = fold == k
            energy[held] = score(model, hidden_matrix(hidden, groups["hidden_row"].to_numpy()[held], source),
                                 batch_size=1024)
        pairs = group_pair_metrics(energy, groups["problem_id"].to_numpy(), groups["correct"].to_numpy(bool))
        table[source] = {"auroc": pairs["pair_acc"], "top1": top1_accuracy(energy, groups)}
    order = list(table)
    best = max(order, key=lambda s: (np.nan_to_num(table[s]["auroc"], nan=-1.0), -order.index(s)))
    logger.info("LatentEBM features by %d-fold CV on %d problems: %s (%s)", folds, n_problems, best,
                ", ".join(f"{s} {v['auroc']:.3f}" for s, v in table.items()))
    return best, table


def resolve_source(config: Any, groups: pd.DataFrame, hidden: dict[str, Any] | None
                   ) -> tuple[str, dict[str, dict[str, float]] | None]:
    """``config.hidden_source`` (a :class:`~impetus.learned.fitting.ScorerConfig`), or the one chosen
    on ``groups`` when it is ``cv`` (with its table; None otherwise, or without hidden states)."""
    if config.hidden_source != CV or hidden is None:
        return config.hidden_source, None
    return choose_hidden_source(groups, hidden, config.latent_ebm.model, config.latent_ebm.train,
                                config.cross_fit_folds, config.seed)

