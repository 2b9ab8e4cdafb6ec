"""mining: EORM training groups from the train split's graded, scored candidates."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from impetus.framework.config import MiningParams
from impetus.learned.fitting import build_groups
from impetus.learned.mining import group_stats, hard_negative_mask
from impetus.framework.tracking import as_mlflow_metrics

logger = logging.getLogger(__name__)


def mine_ebm_groups(
    graded_train: pd.DataFrame, energies_train: pd.DataFrame, hidden_train: dict[str, Any],
    problems_dev: pd.DataFrame, problems_eval: pd.DataFrame, mining: MiningParams,
) -> tuple[pd.DataFrame, dict]:
    """Keep every candidate of train problems with >=1 right and >=1 wrong answer.

    Asserts that no dev or eval problem leaks into the training data (raises ``LeakageError``).
    """
    held_out = set(problems_eval["problem_id"]) | set(problems_dev["problem_id"])
    groups = build_groups(graded_train, energies_train, hidden_train, held_out)
    if groups.empty:
        raise ValueError(
            "No train problem has both a right and a wrong candidate, so the learned energies have "
            "nothing to learn from. Increase ingest.n_train or sampling.n, or pick an easier benchmark."
        )
    stats = group_stats(graded_train)
    if mining.hard_negative_energy and mining.hard_negative_energy in groups.columns:
        # Reported, not trained on: how often the training-free energy prefers a wrong candidate.
        stats["n_hard_negatives"] = int(hard_negative_mask(groups, mining.hard_negative_energy).sum())
    logger.info("Mined EBM groups: %s", stats)
    return groups, as_mlflow_metrics({f"mining/{k}": v for k, v in stats.items()})
