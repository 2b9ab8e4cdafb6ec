"""energies: logit energies and pooled hidden states (recorded while decoding, or teacher-forced) and
consistency energies.

Every energy column is oriented so that LOWER = BETTER (see ``impetus.energy.registry``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from impetus.benchmarks.grading import one_prompt_per_problem
from impetus.framework.config import EnergyStageParams
from impetus.energy.consistency import consistency_energies
from impetus.energy.recorded import has_record, is_choices, recorded_energies
from impetus.lm.precision import choose_dtype
from impetus.lm.scoring import score_table
from impetus.pipelines.utils import load_base_lm
from impetus.framework.tracking import as_mlflow_metrics

logger = logging.getLogger(__name__)


def compute_energies(
    graded: pd.DataFrame, prompts: pd.DataFrame, base_lm: dict[str, Any], energies: EnergyStageParams, split: str,
) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict[str, float], dict]:
    """Score every candidate of one split against the prompts the sampler saw (``prompts_{split}``).

    Returns the energies table, the pooled hidden states, the stage's timing (persisted, so that
    rerank_eval can charge each method the scoring cost it needs) and MLflow metrics.
    """
    recorded = has_record(graded)
    if energies.logit_source == "recorded" and not recorded:
        raise ValueError("energies.logit_source=recorded but the candidates carry no recorded statistics: "
                         "sample with sampling.record=true, or use logit_source=auto/teacher_forced")
    start = time.perf_counter()
    if recorded and energies.logit_source != "teacher_forced":
        table, hidden = recorded_energies(graded)  # pooling only: no LM forward
        lm_seconds, source = time.perf_counter() - start, "recorded"
    else:
        one_prompt_per_problem(prompts, "the teacher-forced energies pass")
        model, tok = load_base_lm(base_lm)
        table, hidden, lm_seconds = score_table(
            model, tok, graded, prompts, batch_size=energies.batch_size, hidden=energies.hidden_states,
            progress=energies.progress,
        )
        source = "teacher_forced"
    if is_choices(graded):  # one candidate per answer: agreement and similarity between choices mean nothing
        emb_seconds, emb_dtype = 0.0, "float32"
    else:
        emb_dtype, why = choose_dtype(energies.embedding_dtype, "cpu", "energies.embedding_dtype")
        logger.info("Embedding model for %s in %s (%s)", split, emb_dtype, why)
        consistency, emb_seconds = consistency_energies(
            graded, energies.embedding_model, batch_size=energies.embedding_batch_size, dtype=emb_dtype
        )
        table = pd.concat([table, consistency], axis=1)
    # lm_seconds: what the logit energies and hidden states cost here (the recording overhead itself
    # is inside the sampling time, which every method already pays).
    timing = {"lm_seconds": lm_seconds, "embedding_seconds": emb_seconds, "n_candidates": len(graded),
              "n_problems": int(graded["problem_id"].nunique()), "recorded": float(source == "recorded"),
              "embedding_bf16": float(emb_dtype == "bfloat16")}
    n = max(len(graded), 1)
    metrics = {f"energies/{split}/{k}": v for k, v in timing.items()}
    metrics[f"energies/{split}/seconds_per_candidate"] = (lm_seconds + emb_seconds) / n
    logger.info("Energies %s (%s): %d candidates in %.1f s", split, source, len(graded), lm_seconds + emb_seconds)
    return table, hidden, timing, as_mlflow_metrics(metrics)
