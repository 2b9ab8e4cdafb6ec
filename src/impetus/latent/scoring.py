"""Energies of answers V2 and EBD produce, on the same scale as the V1 candidates they compete with.

A new answer gets every column the V1 energies table has: logit energies and pooled hidden states
from one teacher-forced pass (V2: the answer's prefix came from optimised latents, the recording
sampler did not produce it) or from recorded values (EBD: :meth:`NewAnswerScorer.from_traces`),
the learned energies, and the consistency energies against the problem's V1 candidate pool (the
N sampled answers), computed by the registry's own functions (:mod:`impetus.energy.consistency`)
with the new answer as one more member of the pool: ``answer_agreement`` is minus the share of
pool + answer giving its answer, ``embedding_consistency`` minus its mean cosine similarity to the
pool's completions (embedded with ``energies.embedding_model``). The hybrid then combines them
with its fitted weights.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd

from impetus.benchmarks.grading import problem_rows
from impetus.energy.consistency import answer_agreement, embed_texts, embedding_consistency
from impetus.learned.fitting import LearnedScorers, add_learned_energies
from impetus.lm.sampler import Generation
from impetus.lm.trace import Trace, trace_energies

#: ``teacher_forced(prompts, completions, answer char spans) -> scored`` with ``energies``,
#: ``hidden_mean``, ``hidden_answer`` and ``n_tokens`` (:func:`impetus.lm.scoring.score_candidates`).
TeacherForced = Callable[[list[str], list[str], list["tuple[int, int] | None"]], Any]


def against_pool(pool_answers: list[Any], pool_emb: np.ndarray, answers: list[Any], emb: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(answer_agreement, embedding_consistency)`` of each new answer as one more member of the
    pool (:func:`impetus.energy.consistency.answer_agreement`, :func:`~.embedding_consistency`):
    each new answer forms its own group with a copy of the pool, so new answers never vote together."""
    m = len(pool_answers)
    groups = np.repeat(np.arange(len(answers)), m + 1)
    last = np.arange(len(answers)) * (m + 1) + m  # each group's new answer
    agreement = answer_agreement([x for a in answers for x in (*pool_answers, a)], groups)[last]
    stacked = np.concatenate([np.vstack([pool_emb, e[None]]) for e in emb]) if len(answers) else pool_emb[:0]
    return agreement, embedding_consistency(stacked, groups)[last]


class NewAnswerScorer:
    """``scorer(problem_id, generations) -> energies table`` (one row per generation)."""

    def __init__(self, tokenizer: Any, bench: Any, problems: pd.DataFrame, prompts: pd.DataFrame,
                 pool: pd.DataFrame, scorers: LearnedScorers, embedding_model: str | None,
                 teacher_forced: TeacherForced | None = None):
        self.tok, self.bench, self.scorers, self.teacher_forced = tokenizer, bench, scorers, teacher_forced
        self.rows = problem_rows(problems)
        self.prompt = dict(zip(prompts["problem_id"], prompts["prompt"]))
        self.pool = {pid: g for pid, g in pool.groupby("problem_id")}
        self.problems = problems
        self.embedding_model = embedding_model
        self._pool_emb: dict[str, np.ndarray] = {}
        self.lm_tokens = 0  # teacher-forced tokens spent scoring (forward-token work)

    def _answers(self, pid: str, texts: list[str]) -> tuple[list[str | None], list[tuple[int, int] | None]]:
        found = [self.bench.extract_span(t, self.rows[pid]) for t in texts]
        return ([self.bench.answer_of(f, self.rows[pid]) for f in found],
                [(f[1], f[2]) if f else None for f in found])

    def _pool_embeddings(self, pid: str) -> np.ndarray:
        if pid not in self._pool_emb:
            self._pool_emb[pid] = embed_texts(self.pool[pid]["completion"].tolist(), self.embedding_model)
        return self._pool_emb[pid]

    def __call__(self, pid: str, gens: list[Generation]) -> pd.DataFrame:
        """Energies of generations from a teacher-forced pass over them."""
        return self.score_many([pid] * len(gens), gens)

    def score_many(self, pids: list[str], gens: list[Generation]) -> pd.DataFrame:
        """Energies of generations of many problems (``pids[i]`` is generation ``i``'s), in order, from
        one teacher-forced pass over all of them (V2 batches its answers across problems)."""
        if self.teacher_forced is None:
            raise ValueError("scoring generations needs a teacher-forced pass (teacher_forced=)")
        texts = [g.text for g in gens]
        found = [self._answers(pid, [t]) for pid, t in zip(pids, texts)]
        answers, spans = [a[0] for a, _ in found], [s[0] for _, s in found]
        scored = self.teacher_forced([self.prompt[pid] for pid in pids], texts, spans)
        self.lm_tokens += int(scored.n_tokens.sum())
        hidden = {"hidden_mean": scored.hidden_mean, "hidden_answer": scored.hidden_answer}
        return self._complete(list(pids), texts, answers, scored.energies, hidden)

    def from_traces(self, pid: str, traces: list[Trace]) -> pd.DataFrame:
        """Energies of traces from their recorded values (no LM pass, :func:`impetus.lm.trace.trace_energies`)."""
        texts = [self.tok.decode(tr.ids, skip_special_tokens=False) for tr in traces]
        answers, spans = self._answers(pid, texts)
        table, hidden = trace_energies(self.tok, traces, spans)
        return self._complete(pid, texts, answers, table, hidden)

    def _complete(self, pids: str | list[str], texts: list[str], answers: list[str | None], energies: pd.DataFrame,
                  hidden: dict[str, np.ndarray]) -> pd.DataFrame:
        """Add the consistency energies against each row's problem's pool and the learned energies."""
        pids = [pids] * len(texts) if isinstance(pids, str) else pids
        df = energies.reset_index(drop=True).assign(problem_id=pids, sample_idx=np.arange(len(texts)), completion=texts,
                                                    answer=answers, hidden_row=np.arange(len(texts)))
        df["answer_agreement"], df["embedding_consistency"] = 0.0, 0.0
        emb = embed_texts(texts, self.embedding_model)
        for pid, idx in df.groupby("problem_id", sort=False).indices.items():
            agreement, consistency = against_pool(self.pool[pid]["answer"].tolist(), self._pool_embeddings(pid),
                                                  [answers[i] for i in idx], emb[idx])
            df.loc[idx, "answer_agreement"], df.loc[idx, "embedding_consistency"] = agreement, consistency
        out, _ = add_learned_energies(df, self.problems, hidden, self.tok, self.scorers)
        return out
