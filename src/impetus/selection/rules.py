"""Selection rules: turn N scored candidates per problem into one chosen ``sample_idx``.

Every selector takes a candidates/energies frame with at least ``problem_id`` and ``sample_idx``
(plus ``answer``, ``correct`` or an energy column as it needs) and returns a
``pd.Series`` indexed by ``problem_id`` whose values are the chosen ``sample_idx``. A selector
decides each problem from that problem's rows alone: :func:`~impetus.selection.metrics.accuracy_vs_n`
relies on it to score many random draws in one call, each draw's problems under ids of their own.

Energies follow the project contract: **lower = better** for every column, so no selector ever
special-cases a method.

References
----------
- Self-consistency / majority vote: Wang et al., "Self-Consistency Improves Chain of Thought
  Reasoning in Language Models", arXiv:2203.11171.
- Energy-based reranking (argmin of a learned energy): Jiang et al., "EORM: Energy Outcome Reward
  Model", arXiv:2505.14999.
- Weighted voting with a verifier/confidence score: Li et al., "Making Large Language Models Better
  Reasoners with Step-Aware Verifier" (DIVERSE), arXiv:2206.02336.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Literal, Sequence

import numpy as np
import pandas as pd

Selector = Callable[[pd.DataFrame], pd.Series]

__all__ = [
    "Selector",
    "select_argmin",
    "select_first",
    "select_majority",
    "select_weighted_vote",
    "majority_index",
    "vote_winners",
    "oracle",
    "selection_correct",
    "METHODS",
    "get_selector",
]


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    # A stable order by (problem, sample) makes every tie-break below deterministic and independent
    # of how the caller happened to order the rows.
    return df.sort_values(["problem_id", "sample_idx"], kind="mergesort")


def _as_selection(s: pd.Series) -> pd.Series:
    s = s.astype("int64")
    s.index.name = "problem_id"
    s.name = "sample_idx"
    return s


def _is_missing(answers: pd.Series) -> pd.Series:
    """True where an answer is absent (None/NaN) — such candidates never receive a vote."""
    return answers.isna()


def select_argmin(df: pd.DataFrame, energy_col: str) -> pd.Series:
    """Pick the lowest-energy candidate per problem.

    Ties go to the lowest ``sample_idx``; NaN energies rank last (a NaN-only problem gets its
    lowest ``sample_idx``), so the result is deterministic and every problem gets a choice.
    """
    d = _sorted(df)[["problem_id", "sample_idx", energy_col]].copy()
    # Replace NaN by +inf so that NaN candidates lose to any finite energy but still count.
    d["_e"] = d[energy_col].astype(float).fillna(np.inf)
    d = d.sort_values(["problem_id", "_e", "sample_idx"], kind="mergesort")
    first = d.groupby("problem_id", sort=True).head(1)
    return _as_selection(first.set_index("problem_id")["sample_idx"])


def select_first(df: pd.DataFrame) -> pd.Series:
    """Single-sample baseline: the lowest ``sample_idx`` present (``0`` on a full candidate set).

    Under sub-sampling (accuracy-vs-N) sample 0 may be absent; the lowest present index is an
    equally random single sample, so the baseline stays unbiased.
    """
    return _as_selection(df.groupby("problem_id", sort=True)["sample_idx"].min())


def vote_winners(d: pd.DataFrame, weight: np.ndarray | None = None) -> pd.DataFrame:
    """The (weighted) vote of every problem: its winning non-missing answer.

    ``d`` has ``problem_id``, ``sample_idx`` and ``answer``; ``weight`` is one vote weight per row
    (None: one vote each, i.e. majority). The winner has the highest total weight; ties go to the
    answer occurring first (lowest ``sample_idx``). Answers are compared as strings. Returns rows
    ``(problem_id, _ans)`` (``_ans``: the winning answer as a string) for problems with any answer.
    """
    valid = d[~_is_missing(d["answer"])].copy()
    valid["_ans"] = valid["answer"].astype(str)
    valid["_w"] = 1.0 if weight is None else weight[~_is_missing(d["answer"]).to_numpy()]
    agg = valid.groupby(["problem_id", "_ans"], sort=False).agg(score=("_w", "sum"), first=("sample_idx", "min"))
    # Round so mathematically equal totals (summed in a different order) tie exactly and fall to
    # the first-occurrence rule instead of floating-point noise. The best weight is 1 (min-shift).
    agg["score"] = agg["score"].round(9)
    agg = agg.reset_index().sort_values(["problem_id", "score", "first"], ascending=[True, False, True], kind="mergesort")
    return agg.groupby("problem_id", sort=True).head(1)[["problem_id", "_ans"]]


def select_majority(df: pd.DataFrame) -> pd.Series:
    """Self-consistency (Wang et al., 2203.11171): the most frequent non-None answer.

    Ties between answers go to the answer that occurs first (lowest ``sample_idx``); the returned
    sample is that answer's first occurrence. Problems where every answer is None fall back to the
    first sample.
    """
    d = _sorted(df)
    win = vote_winners(d)
    d = d.assign(_ans=d["answer"].astype(str).where(~_is_missing(d["answer"])))
    chosen = d.merge(win, on=["problem_id", "_ans"]).groupby("problem_id", sort=True)["sample_idx"].min()
    fallback = select_first(d)
    return _as_selection(chosen.reindex(fallback.index).fillna(fallback))


def majority_index(answers: Sequence[Any]) -> int:
    """Index in ``answers`` of the majority answer's first occurrence (self-consistency over a list,
    Wang et al., 2203.11171): the same rule as :func:`select_majority` (missing answers never vote,
    ties to the answer seen first), and 0 when no answer is present."""
    df = pd.DataFrame({"problem_id": 0, "sample_idx": range(len(answers)), "answer": pd.Series(list(answers), dtype=object)})
    return int(select_majority(df).iloc[0]) if len(answers) else 0


def select_weighted_vote(
    df: pd.DataFrame,
    energy_col: str,
    tau: float = 1.0,
    normalize: Literal["zscore", "shift"] = "zscore",
) -> pd.Series:
    """Energy-weighted vote: each answer gets ``sum exp(-E/tau)`` over the candidates giving it.

    Energies are made comparable before exponentiation, per problem:

    - ``normalize="zscore"`` (default): ``E' = (E - mean) / std`` per problem, then shifted by its
      minimum. This makes ``tau`` scale-free, so one ``tau`` works for energies with very different
      ranges (log-probs vs. learned EBM outputs).
    - ``normalize="shift"``: ``E' = E - min(E)``; keeps the raw scale (``tau`` in energy units).

    In both cases the min-shift only guards ``exp`` against overflow/underflow; it does not change
    the arg-max. NaN energies get the problem's worst (max) energy. ``tau -> 0`` approaches argmin,
    ``tau -> inf`` approaches majority vote. The returned sample is the lowest-energy one carrying
    the winning answer; ties between answers go to the first-occurring answer. If every answer is
    None, falls back to :func:`select_argmin`.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if normalize not in ("zscore", "shift"):
        raise ValueError(f"unknown normalize={normalize!r}")
    d = _sorted(df).copy()
    grp = d.groupby("problem_id", sort=False)[energy_col]
    e = d[energy_col].astype(float).fillna(grp.transform("max")).fillna(0.0)  # all-NaN -> 0
    by = e.groupby(d["problem_id"], sort=False)
    if normalize == "zscore":
        sd = by.transform("std", ddof=0)
        e = ((e - by.transform("mean")) / sd.where(sd > 0)).fillna(0.0)
    e = e - e.groupby(d["problem_id"], sort=False).transform("min")
    d["_e"] = e.to_numpy()
    win = vote_winners(d, np.exp(-d["_e"].to_numpy() / tau))
    d["_ans"] = d["answer"].astype(str).where(~_is_missing(d["answer"]))
    cand = d.merge(win, on=["problem_id", "_ans"])
    # Problems with no answer at all: argmin over the same (normalized) energies.
    cand = pd.concat([cand, d[~d["problem_id"].isin(win["problem_id"])]])
    cand = cand.sort_values(["problem_id", "_e", "sample_idx"], kind="mergesort")
    return _as_selection(cand.groupby("problem_id", sort=True).head(1).set_index("problem_id")["sample_idx"])


def oracle(df: pd.DataFrame) -> pd.Series:
    """pass@N oracle: the first correct sample if any, else the first sample (counts as wrong)."""
    d = _sorted(df).copy()
    d["_wrong"] = ~d["correct"].astype(bool)
    d = d.sort_values(["problem_id", "_wrong", "sample_idx"], kind="mergesort")
    return _as_selection(d.groupby("problem_id", sort=True).head(1).set_index("problem_id")["sample_idx"])


def selection_correct(df: pd.DataFrame, selection: pd.Series) -> pd.Series:
    """Whether each problem's selected sample is correct: ``Series[problem_id -> bool]``."""
    lookup = df.set_index(["problem_id", "sample_idx"])["correct"]
    keys = pd.MultiIndex.from_arrays([selection.index, selection.to_numpy()], names=["problem_id", "sample_idx"])
    missing = ~keys.isin(lookup.index)
    if missing.any():
        raise KeyError(f"selected (problem_id, sample_idx) not in df: {list(keys[missing])[:5]}")
    vals = lookup.loc[keys].astype(bool).to_numpy()
    return pd.Series(vals, index=selection.index.rename("problem_id"), name="correct")


# Registry: a new method is one function plus one entry here. Selectors needing parameters
# (energy_col, tau) are bound with get_selector(name, **kwargs).
METHODS: dict[str, Callable[..., pd.Series]] = {
    "first": select_first,
    "majority": select_majority,
    "argmin": select_argmin,
    "weighted_vote": select_weighted_vote,
    "oracle": oracle,
}


def get_selector(name: str, **kwargs: Any) -> Selector:
    """Look up a selector by name and bind its parameters, returning ``df -> selection``.

    The returned ``functools.partial`` exposes ``.keywords['energy_col']`` so evaluation can find
    the energy column a method uses (for AUROC).
    """
    if name not in METHODS:
        raise KeyError(f"unknown selection method {name!r}; known: {sorted(METHODS)}")
    return partial(METHODS[name], **kwargs)
