"""Adaptive N online: sample each problem in waves and stop it once its answer is settled.

DeepConf's online mode (Fu et al., arXiv:2508.15260): a problem gets ``wave`` more samples at a
time until the vote on its answer passes a threshold, instead of always N. The rules and the votes
they stop are those of the offline evaluation (:mod:`impetus.selection.adaptive`), limited to the
ones that need nothing but the sampled rows themselves (a learned energy is trained after
sampling, so ``energy_vote`` cannot stop a sampler):

- ``vote_margin``: majority vote on the extracted answers; stops on the leader's share, or once the
  samples left could not overtake it;
- ``deepconf``: each trace's DeepConf lowest-group confidence as its vote weight (computed from the
  statistics recorded while decoding, exactly as the ``neg_deepconf_lowest_group`` energy).

The threshold is chosen on train-side candidates sampled at full N (:func:`choose_stop`), never on
eval. A problem's k-th row is seeded by (problem, k) alone (:func:`impetus.lm.sampler.row_seed`),
so the rows an adaptive run keeps are the first rows of the full-N run, and the offline evaluation
at the same threshold stops every problem where the sampler did (both use
:func:`~impetus.selection.adaptive.fires`; tested). The sampling driver replays the rule on a
shard's rows (:meth:`WaveStop.counts`) to check that every problem has exactly the rows the rule
asked for, so a truncated or foreign shard is never trusted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from impetus.selection.adaptive import (
    RuleSpec, choose_threshold, evaluate_rule, fires, prefix_consensus, wave_ends, wave_table,
)

AnswerFn = Callable[[str, str], "str | None"]
"""``answer_of(problem_id, completion)``: the canonical answer the grader would read, or None."""

#: The rules a sampler can stop on (name -> the vote it stops), see the module docstring.
ONLINE_RULES: dict[str, RuleSpec] = {
    "vote_margin": RuleSpec("vote_margin", margin_stop=True),
    "deepconf": RuleSpec("deepconf", weight_col="neg_deepconf_lowest_group"),
}


def deepconf_energy(rows: pd.DataFrame) -> np.ndarray:
    """``neg_deepconf_lowest_group`` of each row from its recorded per-token confidence
    (``rec_deepconf``, the first ``n_tokens``), filled like the energies stage fills it."""
    import torch

    from impetus.energy.logit import DEFAULT_GROUP_WINDOW, FILL_VALUE, lowest_group_confidence

    if "rec_deepconf" not in rows.columns:
        raise ValueError("sampling.adaptive=deepconf needs the recorded statistics (sampling.record: true)")
    out = []
    for conf, t in zip(rows["rec_deepconf"], rows["n_tokens"]):
        v = -lowest_group_confidence(torch.tensor(np.asarray(conf, np.float32)[: int(t)]), DEFAULT_GROUP_WINDOW)
        out.append(v if math.isfinite(v) else FILL_VALUE)
    return np.asarray(out, dtype=np.float64)


def with_vote_columns(rows: pd.DataFrame, rule: str, answer_of: AnswerFn | None) -> pd.DataFrame:
    """``rows`` with what ``rule``'s vote reads: ``answer`` (extracted unless already there) and
    its weight column."""
    spec = ONLINE_RULES[rule]
    out = rows
    if "answer" not in rows.columns:
        if answer_of is None:
            raise ValueError("rows carry no `answer` column and no answer reader was given")
        out = out.assign(answer=pd.Series([answer_of(str(p), t) for p, t in zip(rows["problem_id"], rows["completion"])],
                                          index=rows.index, dtype=object))
    if spec.weight_col is not None and spec.weight_col not in rows.columns:
        out = out.assign(**{spec.weight_col: deepconf_energy(rows)})
    return out


@dataclass(frozen=True)
class WaveStop:
    """Adaptive N online: ``wave`` samples per problem at a time, stopped by ``rule`` at ``threshold``.

    ``answer_of`` reads a completion's answer (the benchmark's extractor); it is not part of the
    run's identity (:meth:`describe`), which goes into the run key and every shard's manifest."""

    rule: str
    threshold: float
    wave: int
    answer_of: AnswerFn = field(compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.rule not in ONLINE_RULES:
            raise ValueError(f"unknown adaptive rule {self.rule!r}; known: {sorted(ONLINE_RULES)}")
        if int(self.wave) < 1:
            raise ValueError(f"adaptive wave must be >= 1, got {self.wave}")

    def describe(self) -> dict[str, Any]:
        """What identifies the rule (run key, manifests, MLflow)."""
        return {"rule": self.rule, "threshold": float(self.threshold), "wave": int(self.wave)}

    @staticmethod
    def shard_problems(shard_size: int, n: int) -> int:
        """Problems per adaptive shard: as many as a full-N shard holds rows (``shard_size × n``).

        Every wave is one ``generate`` call that ends on its own tail (the batch emptying while its
        longest rows finish), so a wave needs several batches of rows to keep the batch full. Measured
        at batch 128 (bf16, 2 Xeon cores; docs/benchmarks.md): on the default testbed, 64-problem shards
        (``shard_size × ceil(n / wave)``, the rule before) saved 16% of full N's seconds, one shard of
        all 100 problems 27%; on ``--env large`` 64, 128 and 200 problems saved 59%, 61% and 64%."""
        return int(shard_size) * int(n)

    def stopped(self, rows: pd.DataFrame, n_max: int, k: int) -> set[str]:
        """The problems of ``rows`` (each holding exactly its first ``k`` samples) that stop now."""
        if k >= n_max:
            return {str(p) for p in rows["problem_id"].unique()}
        v = prefix_consensus(with_vote_columns(rows, self.rule, self.answer_of), ONLINE_RULES[self.rule], n_max, k)
        return {str(p) for p in v.index[fires(v, self.threshold).to_numpy()]}

    def counts(self, rows: pd.DataFrame, problem_ids: Sequence[str], n_max: int) -> dict[str, int]:
        """How many rows each problem must have, replayed from the rows it has: the first wave end
        where the rule fires, else ``n_max``. A problem lacking a prefix's rows is judged no further
        (it then must have ``n_max``), so a shard cut short never passes the driver's check."""
        rows = rows.assign(problem_id=rows["problem_id"].astype(str))
        out = {str(p): n_max for p in problem_ids}
        open_ = set(out)
        for k in wave_ends(self.wave, n_max)[:-1]:
            prefix = rows[rows["problem_id"].isin(open_) & (rows["sample_idx"] < k)]
            size = prefix.groupby("problem_id").size()
            whole = set(size.index[size == k])
            if not whole:
                break
            for p in self.stopped(prefix[prefix["problem_id"].isin(whole)], n_max, k):
                out[p] = k
            open_ = whole - {p for p in whole if out[p] == k}
        return out


def choose_stop(train_side: pd.DataFrame, rule: str, wave: int, thresholds: Sequence[float],
                max_drop: float) -> dict[str, Any]:
    """The threshold ``rule`` uses online, chosen on graded full-N train-side candidates (``answer``,
    ``correct``, ``n_tokens``; recorded statistics for ``deepconf``) exactly as the offline report
    chooses it (:func:`~impetus.selection.adaptive.choose_threshold`); with that threshold's numbers there."""
    d = with_vote_columns(train_side, rule, None)
    table = wave_table(d, ONLINE_RULES[rule], wave)
    threshold = choose_threshold(table, thresholds, max_drop)
    return {"rule": rule, "wave": int(wave), "threshold": float(threshold),
            "selection": evaluate_rule(table, threshold)}
