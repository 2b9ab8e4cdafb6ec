"""Energies of answers V2 produces, on the same scale as the V1 candidates they compete with.

A new answer gets every column the V1 energies table has: logit energies and pooled hidden states
from one teacher-forced pass (the answer was not sampled by the recording sampler: its prefix came
from optimised latents), the learned energies, and the consistency energies measured against the
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
        texts = [g.text for g in gens]
        answers, spans = self._answers(pid, texts)
        scored = score_candidates(self.model, self.tok, [self.prompt[pid]] * len(texts), texts, spans,
                                  batch_size=16, hidden=True)
        self.lm_tokens += int(scored.n_tokens.sum())
        df = scored.energies.assign(problem_id=pid, sample_idx=np.arange(len(texts)), completion=texts,
                                    answer=answers, hidden_row=np.arange(len(texts)))
        pool = self.pool[pid]
        pool_answers = pool["answer"].astype(object).where(pool["answer"].notna(), None).tolist()
        df["answer_agreement"] = [-(sum(a == b for b in pool_answers) / max(len(pool_answers), 1)) if a is not None
                                  else 0.0 for a in answers]
        sims = embed_texts(texts, self.embedding_model) @ self._pool_embeddings(pid).T
        df["embedding_consistency"] = -sims.mean(axis=1)
        hidden = {"hidden_mean": scored.hidden_mean, "hidden_answer": scored.hidden_answer}
        out, _ = add_learned_energies(df, self.problems, hidden, self.tok, self.scorers)
        return out
