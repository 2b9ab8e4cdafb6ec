"""mining: EORM training groups from the train split's graded, scored candidates."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from impetus.config import MiningParams, parse
from impetus.energy.learned import build_groups
from impetus.energy.mining import group_stats, hard_negative_mask
from impetus.tracking import as_mlflow_metrics

logger = logging.getLogger(__name__)


def mine_ebm_groups(
    graded_train: pd.DataFrame,
    energies_train: pd.DataFrame,
    hidden_train: dict[str, Any],
    problems_eval: pd.DataFrame,
    mining: dict[str, Any],
) -> tuple[pd.DataFrame, dict]:
    """Keep every candidate of train problems with >=1 right and >=1 wrong answer.

    Asserts that no eval problem leaks into the training data (raises ``LeakageError``).
    """
    mp = parse(MiningParams, mining, "mining")
    groups = build_groups(graded_train, energies_train, hidden_train, set(problems_eval["problem_id"]))
    if groups.empty:
        raise ValueError(
            "No train problem has both a right and a wrong candidate, so the learned energies have "
            "nothing to learn from. Increase ingest.n_train or sampling.n, or pick an easier benchmark."
        )
    stats = group_stats(graded_train)
    if mp.hard_negative_energy and mp.hard_negative_energy in groups.columns:
        groups["hard_negative"] = hard_negative_mask(groups, mp.hard_negative_energy)
        stats["n_hard_negatives"] = int(groups["hard_negative"].sum())
    logger.info("Mined EBM groups: %s", stats)
    return groups, as_mlflow_metrics({f"mining/{k}": v for k, v in stats.items()})
