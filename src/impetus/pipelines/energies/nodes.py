"""energies: teacher-forced logit energies, pooled hidden states and consistency energies.

Every energy column is oriented so that LOWER = BETTER (see ``impetus.energy.logit``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from impetus.benchmarks.grading import build_prompts
from impetus.config import BenchmarkParams, EnergyStageParams, SamplingStageParams, parse
from impetus.energy.consistency import answer_agreement, embed_texts, embedding_consistency
from impetus.lm.loading import load_model
from impetus.lm.scoring import score_candidates
from impetus.tracking import as_mlflow_metrics

logger = logging.getLogger(__name__)


def _answer_spans(graded: pd.DataFrame) -> list[tuple[int, int] | None]:
    return [
        None if pd.isna(s) or pd.isna(e) else (int(s), int(e))
        for s, e in zip(graded["answer_start"], graded["answer_end"])
    ]


def compute_energies(
    graded: pd.DataFrame,
    problems: pd.DataFrame,
    fewshot: pd.DataFrame,
    base_lm: dict[str, Any],
    benchmark: dict[str, Any],
    sampling: dict[str, Any],
    energies: dict[str, Any],
    split: str,
) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict[str, float], dict]:
    """Score every candidate of one split.

    Returns the energies table, the pooled hidden states, the stage's timing (persisted, so that
    rerank_eval can charge each method the scoring cost it needs) and MLflow metrics.
    """
    ep = parse(EnergyStageParams, energies, "energies")
    sp = parse(SamplingStageParams, sampling, "sampling")
    bp = parse(BenchmarkParams, benchmark, "benchmark")
    bench = bp.build()
    model, tok = load_model(base_lm["path"], device=base_lm["device"], dtype=base_lm["dtype"])
    # Rebuild the exact prompts the sampler saw (same function, same exemplars).
    prompt_of = dict(zip(problems["problem_id"], build_prompts(bench, problems, fewshot, sp.prompt_style, tok)))
    start = time.perf_counter()
    scored = score_candidates(
        model, tok,
        prompts=[prompt_of[p] for p in graded["problem_id"]],
        completions=graded["completion"].tolist(),
        answer_spans=_answer_spans(graded),
        batch_size=ep.batch_size,
        hidden=ep.hidden_states,
        progress=ep.progress,
    )
    lm_seconds = time.perf_counter() - start
    start = time.perf_counter()
    emb = embed_texts(graded["completion"].tolist(), ep.embedding_model, batch_size=ep.embedding_batch_size)
    table = scored.energies.reset_index(drop=True)
    table.insert(0, "problem_id", graded["problem_id"].to_numpy())
    table.insert(1, "sample_idx", graded["sample_idx"].to_numpy())
    table["embedding_consistency"] = embedding_consistency(emb, graded["problem_id"].to_numpy())
    table["answer_agreement"] = answer_agreement(graded["answer"].tolist(), graded["problem_id"].to_numpy())
    emb_seconds = time.perf_counter() - start
    hidden = {
        "problem_id": graded["problem_id"].to_numpy(),
        "sample_idx": graded["sample_idx"].to_numpy(),
        "hidden_mean": scored.hidden_mean,
        "hidden_answer": scored.hidden_answer,
    }
    n = max(len(graded), 1)
    metrics = {
        f"energies/{split}/seconds": lm_seconds + emb_seconds,
        f"energies/{split}/lm_seconds": lm_seconds,
        f"energies/{split}/embedding_seconds": emb_seconds,
        f"energies/{split}/seconds_per_candidate": (lm_seconds + emb_seconds) / n,
    }
    logger.info("Energies %s: %d candidates in %.1f s", split, len(graded), lm_seconds + emb_seconds)
    timing = {"lm_seconds": lm_seconds, "embedding_seconds": emb_seconds, "n_candidates": len(graded),
              "n_problems": int(graded["problem_id"].nunique())}
    return table, hidden, timing, as_mlflow_metrics(metrics)
