"""Energies of answers V2 and EBD produce, on the same scale as the V1 candidates they compete with.

A new answer is a :class:`impetus.lm.trace.Trace` (its recorded values, states and cache), so it
gets every column the V1 energies table has without another LM pass: logit energies and pooled
hidden states from its recorded values (:func:`impetus.lm.trace.trace_energies`), the learned
energies, and the consistency energies against the problem's V1 candidate pool (the N sampled
answers), computed by the registry's own functions (:mod:`impetus.energy.consistency`) with the new
answer as one more member of the pool: ``answer_agreement`` is minus the share of pool + answer
giving its answer, ``embedding_consistency`` minus its mean cosine similarity to the pool's
completions (embedded with ``energies.embedding_model``). The hybrid then combines them with its
fitted weights. A scorer told the one energy its stage ranks by embeds nothing unless that energy
reads embedding consistency (:func:`impetus.energy.registry.cost_keys`: the default hybrid does not),
and leaves that column NaN: MiniLM was 5 of the default ``ebd`` run's 106 s.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from impetus.benchmarks.grading import problem_rows
from impetus.energy.consistency import answer_agreement, embed_texts, embedding_consistency
from impetus.energy.registry import EMBEDDING_COST, cost_keys
from impetus.learned.fitting import LearnedScorers, add_learned_energies
from impetus.lm.trace import Trace, trace_energies


def against_pool(pool_answers: list[Any], pool_emb: np.ndarray | None, answers: list[Any], emb: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(answer_agreement, embedding_consistency)`` of each new answer as one more member of the
    pool (:func:`impetus.energy.consistency.answer_agreement`, :func:`~.embedding_consistency`):
    each new answer forms its own group with a copy of the pool, so new answers never vote together.
    Without embeddings (None) the consistency is NaN."""
    m = len(pool_answers)
    groups = np.repeat(np.arange(len(answers)), m + 1)
    last = np.arange(len(answers)) * (m + 1) + m  # each group's new answer
    agreement = answer_agreement([x for a in answers for x in (*pool_answers, a)], groups)[last]
    if pool_emb is None or emb is None:
        return agreement, np.full(len(answers), np.nan)
    stacked = np.concatenate([np.vstack([pool_emb, e[None]]) for e in emb]) if len(answers) else pool_emb[:0]
    return agreement, embedding_consistency(stacked, groups)[last]


class NewAnswerScorer:
    """``scorer.traces_many(problem_ids, traces) -> energies table`` (one row per trace, in order).

    ``held_out``: the learned energies of a training-side problem (dev) come from the fold member
    that held it out (:func:`~impetus.learned.fitting.add_learned_energies`). ``energy``: the one
    energy the caller ranks by; answers are embedded only if it reads embedding consistency (None:
    always, every column filled)."""

    def __init__(self, tokenizer: Any, bench: Any, problems: pd.DataFrame, pool: pd.DataFrame, scorers: LearnedScorers,
                 embedding_model: str | None, held_out: bool = False, energy: str | None = None):
        self.tok, self.bench, self.scorers, self.held_out = tokenizer, bench, scorers, held_out
        hybrid_cols = scorers.hybrid.cols if scorers.hybrid is not None else ()
        self.embed = energy is None or EMBEDDING_COST in cost_keys(energy, hybrid_cols)
        self.rows = problem_rows(problems)
        self.pool = {pid: g for pid, g in pool.groupby("problem_id")}
        self.problems = problems
        self.embedding_model = embedding_model
        self._pool_emb: dict[str, np.ndarray] = {}

    def _pool_embeddings(self, pid: str) -> np.ndarray:
        if pid not in self._pool_emb:
            self._pool_emb[pid] = embed_texts(self.pool[pid]["completion"].tolist(), self.embedding_model)
        return self._pool_emb[pid]

    def from_traces(self, pid: str, traces: list[Trace]) -> pd.DataFrame:
        """Energies of one problem's traces (EBD's chain states)."""
        return self.traces_many([pid] * len(traces), traces)

    def traces_many(self, pids: list[str], traces: list[Trace]) -> pd.DataFrame:
        """Energies of traces of many problems (``pids[i]`` is trace ``i``'s) from their recorded values
        (no LM pass, :func:`impetus.lm.trace.trace_energies`)."""
        texts = [self.tok.decode(tr.ids, skip_special_tokens=False) for tr in traces]
        found = [self.bench.extract_span(t, self.rows[pid]) for pid, t in zip(pids, texts)]
        answers = [self.bench.answer_of(f, self.rows[pid]) for pid, f in zip(pids, found)]
        table, hidden = trace_energies(self.tok, traces, [(f[1], f[2]) if f else None for f in found])
        df = table.reset_index(drop=True).assign(problem_id=list(pids), sample_idx=np.arange(len(texts)),
                                                 completion=texts, answer=answers, hidden_row=np.arange(len(texts)))
        df["answer_agreement"], df["embedding_consistency"] = 0.0, 0.0
        emb = embed_texts(texts, self.embedding_model) if self.embed else None
        for pid, idx in df.groupby("problem_id", sort=False).indices.items():
            agreement, consistency = against_pool(
                self.pool[pid]["answer"].tolist(), self._pool_embeddings(pid) if self.embed else None,
                [answers[i] for i in idx], None if emb is None else emb[idx])
            df.loc[idx, "answer_agreement"], df.loc[idx, "embedding_consistency"] = agreement, consistency
        out, _ = add_learned_energies(df, self.problems, hidden, self.tok, self.scorers, held_out=self.held_out)
        return out
