"""Prompt building and grading of candidate tables with a benchmark's own rules.

Kept next to the registry (not in a Kedro node) so a notebook can rebuild exactly the prompts and
grades a pipeline run used.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from impetus.benchmarks.base import Benchmark

logger = logging.getLogger(__name__)


def build_prompts(
    bench: Benchmark,
    problems: pd.DataFrame,
    fewshot: pd.DataFrame | None,
    style: str,
    tokenizer: Any | None = None,
) -> list[str]:
    """One prompt string per problem row, in order.

    ``fewshot`` rows are the exemplars persisted by the ingest stage (never eval problems). For the
    ``chat_cot`` style the tokenizer's chat template is applied here, so that the sampler and the
    teacher-forced scorer see byte-identical prompts.
    """
    shots = fewshot if fewshot is not None and len(fewshot) else None
    texts = [bench.prompt(row, style, shots=shots) for row in problems.to_dict("records")]
    if style != "chat_cot":
        return texts
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("prompt_style 'chat_cot' needs a tokenizer with a chat template")
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
        )
        for t in texts
    ]


def grade_candidates(bench: Benchmark, candidates: pd.DataFrame, problems: pd.DataFrame) -> pd.DataFrame:
    """Add ``answer`` (None when not found), ``correct`` and the answer's character span.

    A completion without an answer is graded wrong and kept (never dropped), so every selection
    method is judged on the same candidates; the count is logged.
    """
    rows = {r["problem_id"]: r for r in problems.to_dict("records")}
    missing = set(candidates["problem_id"]) - set(rows)
    if missing:
        raise ValueError(
            f"{len(missing)} candidate problem_ids are not in the problems table, e.g. {sorted(missing)[:3]}"
        )
    out = candidates.copy()
    # The row is passed so that e.g. ARC questions with numeric labels extract "2", not "B".
    spans = [bench.extract_span(t, rows[p]) for t, p in zip(out["completion"], out["problem_id"])]
    # Canonical answers (e.g. "7.0" -> "7"), so equal answers vote together.
    out["answer"] = [bench.canonical(s[0]) if s else None for s in spans]
    out["answer_start"] = pd.array([s[1] if s else None for s in spans], dtype="Int64")
    out["answer_end"] = pd.array([s[2] if s else None for s in spans], dtype="Int64")
    out["correct"] = [
        bool(a is not None and bench.grade(a, rows[p]["gold"])) for a, p in zip(out["answer"], out["problem_id"])
    ]
    n_none = int(out["answer"].isna().sum())
    if n_none:
        logger.warning("%d of %d candidates have no extractable answer (graded wrong)", n_none, len(out))
    return out


def grading_summary(graded: pd.DataFrame) -> dict[str, float]:
    """Per-sample accuracy, pass@N (any candidate right) and the no-answer share."""
    per_problem = graded.groupby("problem_id")["correct"]
    return {
        "sample_accuracy": float(graded["correct"].mean()),
        "pass_at_n": float(per_problem.any().mean()),
        "first_sample_accuracy": float(
            graded.sort_values("sample_idx").groupby("problem_id")["correct"].first().mean()
        ),
        "no_answer_share": float(graded["answer"].isna().mean()),
        "n_no_answer": int(graded["answer"].isna().sum()),
        "n_candidates": int(len(graded)),
        "n_problems": int(graded["problem_id"].nunique()),
    }
