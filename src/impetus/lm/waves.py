"""Online adaptive N: sample each problem in waves and stop it once its answer is settled.

The offline evaluation (:mod:`impetus.selection.adaptive`) is exact because this mode draws the
very same rows: wave ``w`` of a problem is samples ``k .. k + wave - 1`` with the seeds a full-N
call would use, so a stopped problem's candidates are a prefix of its full-N candidates.
Stopping rules see the candidates so far with their answers (and, for the confidence rules, the
energies recorded while decoding), as DeepConf's online mode does (arXiv:2508.15260).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import pandas as pd

from impetus.energy.recorded import has_record, recorded_energies
from impetus.lm.runner import SpanFn, _sample_shard
from impetus.lm.sampler import Sampler, SamplingParams
from impetus.selection.adaptive import RuleSpec, _vote

logger = logging.getLogger(__name__)

AnswerFn = Callable[[str, str], "tuple[str, int, int] | None"]
"""``answer(problem_id, completion) -> (canonical answer, start, end)`` or None (the grading rule)."""


def _with_answers(df: pd.DataFrame, answer: AnswerFn) -> pd.DataFrame:
    found = [answer(p, t) for p, t in zip(df["problem_id"], df["completion"])]
    return df.assign(
        answer=[f[0] if f else None for f in found],
        answer_start=pd.array([f[1] if f else None for f in found], dtype="Int64"),
        answer_end=pd.array([f[2] if f else None for f in found], dtype="Int64"),
    )


def settled(prefix: pd.DataFrame, spec: RuleSpec, threshold: float, n_max: int) -> set[str]:
    """Problems of ``prefix`` (answers, and the rule's energy column if any) whose rule fires."""
    k = prefix.groupby("problem_id")["sample_idx"].count()
    fired = set()
    for size, part in prefix.groupby(prefix["problem_id"].map(k)):
        vote = _vote(part, spec, n_max, int(size))
        fired |= set(vote.index[(vote["share"] >= threshold - 1e-12) | vote["settled"]])
    return fired


def sample_in_waves(
    sampler: Sampler, prompts: pd.DataFrame, params: SamplingParams, wave: int, spec: RuleSpec,
    threshold: float, answer: AnswerFn, answer_span: SpanFn | None = None,
) -> pd.DataFrame:
    """Candidates of every problem of ``prompts`` (problem_id, prompt), ``wave`` rows at a time up
    to ``params.n``, each problem stopped once ``spec`` fires at ``threshold``.

    Returns the candidates (with ``answer`` and, when recorded, the rule's energy column), ordered by
    problem then ``sample_idx``; each problem's rows are a prefix of a full ``params.n`` run.
    """
    if wave < 1:
        raise ValueError(f"wave must be >= 1, got {wave}")
    active = list(prompts["problem_id"])
    tables: list[pd.DataFrame] = []
    k = 0
    while active and k < params.n:
        size = min(wave, params.n - k)
        chunk = prompts[prompts["problem_id"].isin(active)]
        rows = _sample_shard(sampler, chunk, dataclasses.replace(params, n=size), None, answer_span, first_sample=k)
        rows = _with_answers(rows, answer)
        if spec.weight_col is not None and has_record(rows):  # logit energies are per candidate
            rows[spec.weight_col] = recorded_energies(rows)[0][spec.weight_col].to_numpy()
        tables.append(rows)
        k += size
        so_far = pd.concat(tables, ignore_index=True)
        so_far = so_far[so_far["problem_id"].isin(active)]
        done = settled(so_far, spec, threshold, params.n)
        active = [p for p in active if p not in done]
        logger.info("wave up to %d samples: %d problems still sampling", k, len(active))
    out = pd.concat(tables, ignore_index=True)
    order = {p: i for i, p in enumerate(prompts["problem_id"])}
    return out.sort_values(["problem_id", "sample_idx"], key=lambda c: c.map(order) if c.name == "problem_id" else c,
                           kind="mergesort").reset_index(drop=True)
