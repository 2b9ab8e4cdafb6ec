"""mining: EORM training groups from the train-side splits' graded, scored candidates.

Which splits: train + dev when the headline is chosen by cross-validation, train alone when it is
chosen on dev (:func:`impetus.learned.crossfit.final_fit_splits`)."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from impetus.framework.config import MiningParams, RerankParams
from impetus.learned.crossfit import concat_hidden, final_fit_splits
from impetus.learned.fitting import build_groups
from impetus.learned.mining import group_stats, hard_negative_mask
from impetus.framework.tracking import as_mlflow_metrics

logger = logging.getLogger(__name__)


def mine_ebm_groups(
    graded_train: pd.DataFrame, energies_train: pd.DataFrame, hidden_train: dict[str, Any],
    graded_dev: pd.DataFrame, energies_dev: pd.DataFrame, hidden_dev: dict[str, Any],
    problems_dev: pd.DataFrame, problems_eval: pd.DataFrame, mining: MiningParams, rerank_eval: RerankParams,
) -> tuple[pd.DataFrame, dict]:
    """Keep every candidate of train-side problems with >=1 right and >=1 wrong answer.

    Asserts that no eval problem (nor, under ``selection: dev``, any dev problem) leaks into the
    training data (raises ``LeakageError``). ``hidden_row`` indexes the train-side hidden states
    concatenated in split order, as the scorer stage concatenates them.
    """
    splits = final_fit_splits(rerank_eval.selection, (graded_train, energies_train, hidden_train),
                              (graded_dev, energies_dev, hidden_dev))
    held_out = set(problems_eval["problem_id"])
    if len(splits) == 1:
        held_out |= set(problems_dev["problem_id"])
    graded = pd.concat([g for g, _, _ in splits], ignore_index=True)
    energies = pd.concat([e for _, e, _ in splits], ignore_index=True)
    groups = build_groups(graded, energies, concat_hidden([h for _, _, h in splits]), held_out)
    if groups.empty:
        raise ValueError(
            "No train-side problem has both a right and a wrong candidate, so the learned energies have "
            "nothing to learn from. Increase ingest.n_train or sampling.n, or pick an easier benchmark."
        )
    stats = group_stats(graded) | {"n_splits": len(splits)}
    if mining.hard_negative_energy and mining.hard_negative_energy in groups.columns:
        # Reported, not trained on: how often the training-free energy prefers a wrong candidate.
        stats["n_hard_negatives"] = int(hard_negative_mask(groups, mining.hard_negative_energy).sum())
    logger.info("Mined EBM groups: %s", stats)
    return groups, as_mlflow_metrics({f"mining/{k}": v for k, v in stats.items()})
