"""energies: teacher-forced logit energies, pooled hidden states and consistency energies.

Every energy column is oriented so that LOWER = BETTER (see ``impetus.energy.registry``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from impetus.config import EnergyStageParams
from impetus.energy.consistency import consistency_energies
from impetus.lm.scoring import score_table
from impetus.pipelines.utils import load_base_lm
from impetus.tracking import as_mlflow_metrics

logger = logging.getLogger(__name__)


def compute_energies(
    graded: pd.DataFrame, prompts: pd.DataFrame, base_lm: dict[str, Any], energies: EnergyStageParams, split: str,
) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict[str, float], dict]:
    """Score every candidate of one split against the prompts the sampler saw (``prompts_{split}``).

    Returns the energies table, the pooled hidden states, the stage's timing (persisted, so that
    rerank_eval can charge each method the scoring cost it needs) and MLflow metrics.
    """
    model, tok = load_base_lm(base_lm)
    table, hidden, lm_seconds = score_table(
        model, tok, graded, prompts, batch_size=energies.batch_size, hidden=energies.hidden_states,
        progress=energies.progress,
    )
    consistency, emb_seconds = consistency_energies(
        graded, energies.embedding_model, batch_size=energies.embedding_batch_size
    )
    table = pd.concat([table, consistency], axis=1)
    timing = {"lm_seconds": lm_seconds, "embedding_seconds": emb_seconds, "n_candidates": len(graded),
              "n_problems": int(graded["problem_id"].nunique())}
    n = max(len(graded), 1)
    metrics = {f"energies/{split}/{k}": v for k, v in timing.items()}
    metrics[f"energies/{split}/seconds_per_candidate"] = (lm_seconds + emb_seconds) / n
    logger.info("Energies %s: %d candidates in %.1f s", split, len(graded), lm_seconds + emb_seconds)
    return table, hidden, timing, as_mlflow_metrics(metrics)
