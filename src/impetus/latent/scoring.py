"""Energies of answers V2 and EBD produce, on the same scale as the V1 candidates they compete with.

A new answer gets every column the V1 energies table has: logit energies and pooled hidden states
from one teacher-forced pass (V2: the answer's prefix came from optimised latents, the recording
sampler did not produce it) or from recorded values (EBD: :meth:`NewAnswerScorer.from_traces`),
the learned energies, and the consistency energies measured against the
problem's V1 candidate pool (the N sampled answers): ``answer_agreement`` is minus the share of
the pool giving the same answer, ``embedding_consistency`` minus the mean cosine similarity to the
pool's completions. The hybrid then combines them with its fitted weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from impetus.energy.consistency import embed_texts
from impetus.learned.fitting import LearnedScorers, add_learned_energies
from impetus.lm.sampler import Generation
from impetus.lm.scoring import score_candidates
from impetus.lm.trace import Trace, trace_energies


class NewAnswerScorer:
    """``scorer(problem_id, generations) -> energies table`` (one row per generation)."""

    def __init__(self, model: Any, tokenizer: Any, bench: Any, problems: pd.DataFrame, prompts: pd.DataFrame,
                 pool: pd.DataFrame, scorers: LearnedScorers, embedding_model: str | None):
        self.model, self.tok, self.bench, self.scorers = model, tokenizer, bench, scorers
        self.rows = {r["problem_id"]: r for r in problems.to_dict("records")}
        self.prompt = dict(zip(prompts["problem_id"], prompts["prompt"]))
        self.pool = {pid: g for pid, g in pool.groupby("problem_id")}
        self.problems = problems
        self.embedding_model = embedding_model
        self._pool_emb: dict[str, np.ndarray] = {}
        self.lm_tokens = 0  # teacher-forced tokens spent scoring (forward-token work)

    def _answers(self, pid: str, texts: list[str]) -> tuple[list[str | None], list[tuple[int, int] | None]]:
        found = [self.bench.extract_span(t, self.rows[pid]) for t in texts]
        return ([self.bench.canonical(f[0]) if f else None for f in found],
                [(f[1], f[2]) if f else None for f in found])

    def _pool_embeddings(self, pid: str) -> np.ndarray:
        if pid not in self._pool_emb:
            self._pool_emb[pid] = embed_texts(self.pool[pid]["completion"].tolist(), self.embedding_model)
        return self._pool_emb[pid]

    def __call__(self, pid: str, gens: list[Generation]) -> pd.DataFrame:
        """Energies of generations from a teacher-forced pass over them."""
        texts = [g.text for g in gens]
        answers, spans = self._answers(pid, texts)
        scored = score_candidates(self.model, self.tok, [self.prompt[pid]] * len(texts), texts, spans,
                                  batch_size=16, hidden=True)
        self.lm_tokens += int(scored.n_tokens.sum())
        hidden = {"hidden_mean": scored.hidden_mean, "hidden_answer": scored.hidden_answer}
        return self._complete(pid, texts, answers, scored.energies, hidden)

    def from_traces(self, pid: str, traces: list[Trace]) -> pd.DataFrame:
        """Energies of traces from their recorded values (no LM pass, :func:`impetus.lm.trace.trace_energies`)."""
        texts = [self.tok.decode(tr.ids, skip_special_tokens=False) for tr in traces]
        answers, spans = self._answers(pid, texts)
        table, hidden = trace_energies(self.tok, traces, spans)
        return self._complete(pid, texts, answers, table, hidden)

    def _complete(self, pid: str, texts: list[str], answers: list[str | None], energies: pd.DataFrame,
                  hidden: dict[str, np.ndarray]) -> pd.DataFrame:
        """Add the consistency energies against the problem's pool and the learned energies."""
        df = energies.reset_index(drop=True).assign(problem_id=pid, sample_idx=np.arange(len(texts)), completion=texts,
                                                    answer=answers, hidden_row=np.arange(len(texts)))
        pool = self.pool[pid]
        pool_answers = pool["answer"].astype(object).where(pool["answer"].notna(), None).tolist()
        df["answer_agreement"] = [-(sum(a == b for b in pool_answers) / max(len(pool_answers), 1)) if a is not None
                                  else 0.0 for a in answers]
        sims = embed_texts(texts, self.embedding_model) @ self._pool_embeddings(pid).T
        df["embedding_consistency"] = -sims.mean(axis=1)
        out, _ = add_learned_energies(df, self.problems, hidden, self.tok, self.scorers)
        return out
