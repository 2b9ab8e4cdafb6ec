"""Evaluation maths for best-of-N selection.

All resampling is over *problems* (the unit of independence), never over candidates.

References
----------
- Percentile bootstrap: Efron & Tibshirani, "An Introduction to the Bootstrap" (1993).
- Paired bootstrap significance test for system comparison: Koehn, "Statistical Significance Tests
  for Machine Translation Evaluation", EMNLP 2004; Berg-Kirkpatrick et al., EMNLP 2012.
- Accuracy vs. number of samples / pass@N oracle: Cobbe et al., "Training Verifiers to Solve Math
  Word Problems", arXiv:2110.14168; Brown et al., "Large Language Monkeys", arXiv:2407.21787.
- Gap closure (fraction of the majority→oracle gap recovered) as in EORM, arXiv:2505.14999.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from impetus.selection.rules import oracle as _oracle_sel
from impetus.selection.rules import select_first, select_majority, selection_correct

Selector = Callable[[pd.DataFrame], pd.Series]

__all__ = [
    "bootstrap_ci",
    "paired_bootstrap",
    "gap_closure",
    "accuracy_vs_n",
    "auroc",
    "within_problem_auroc",
    "evaluate_methods",
]


def bootstrap_ci(
    correct: Sequence[bool] | np.ndarray, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap ``(lo, hi)`` for the mean of per-problem correctness."""
    x = np.asarray(correct, dtype=float)
    if x.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    means = x[idx].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """Paired bootstrap of ``mean(a) - mean(b)`` over the same problems.

    Both systems are resampled with the *same* problem indices, so per-problem difficulty cancels.
    ``p_value`` is two-sided, from the bootstrap distribution re-centred on the null (shift method,
    Berg-Kirkpatrick et al. 2012): ``P(|d* - d| >= |d|)``; identical inputs give ``p = 1``.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired arrays differ in shape: {a.shape} vs {b.shape}")
    diff = a - b
    d = float(diff.mean()) if diff.size else float("nan")
    if diff.size == 0:
        return {"mean_diff": d, "lo": d, "hi": d, "p_value": float("nan")}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diff.size, size=(n_boot, diff.size))
    boots = diff[idx].mean(axis=1)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    # Small tolerance so floating noise on an exact zero difference does not count as "extreme".
    p = float(np.mean(np.abs(boots - d) >= abs(d) - 1e-12))
    return {"mean_diff": d, "lo": float(lo), "hi": float(hi), "p_value": p}


def gap_closure(acc: float, majority: float, oracle: float) -> float | None:
    """``(acc - majority) / (oracle - majority)``; ``None`` when the gap is zero (undefined)."""
    gap = oracle - majority
    if abs(gap) < 1e-12:
        return None
    return float((acc - majority) / gap)


def auroc(correct: Sequence[bool] | np.ndarray, energy: Sequence[float] | np.ndarray) -> float | None:
    """AUROC of an energy as a correctness detector (scored on ``-energy``: lower = better).

    NaN energies are dropped. Returns ``None`` when only one class remains.
    """
    y = np.asarray(correct, dtype=bool)
    e = np.asarray(energy, dtype=float)
    keep = ~np.isnan(e)
    y, e = y[keep], e[keep]
    if y.size == 0 or y.all() or (~y).all():
        return None
    return float(roc_auc_score(y, -e))


def within_problem_auroc(df: pd.DataFrame, energy_col: str) -> float | None:
    """Mean over problems (with >=1 right and >=1 wrong candidate) of the within-problem AUROC.

    Per problem this is the share of (right, wrong) pairs where the right one has the lower energy
    (ties count 1/2), i.e. exactly what a reranker needs. Pooled AUROC also rewards telling easy
    problems from hard ones, which no reranker can use; this measure does not. NaN energies rank
    last (as in :func:`~impetus.selection.rules.select_argmin`). ``None`` when no problem is mixed.
    """
    scores = []
    for _, g in df.groupby("problem_id", sort=False):
        y = g["correct"].to_numpy(dtype=bool)
        if y.all() or not y.any():
            continue
        e = g[energy_col].to_numpy(dtype=float)
        e = np.where(np.isnan(e), np.inf, e)
        d = e[y][:, None] - e[~y][None, :]
        scores.append(float(((d < 0) + 0.5 * (d == 0)).mean()))
    return float(np.mean(scores)) if scores else None


def _stacked_draws(df: pd.DataFrame, n: int, keys: np.ndarray) -> tuple[pd.DataFrame, int]:
    """All draws of ``n`` candidates per problem as one frame: draw ``d`` keeps, per problem, the
    ``n`` rows with the smallest ``keys[d]`` (uniform without replacement), and its problems get
    the ids ``d * n_problems + code``, so one selector call scores every draw at once."""
    codes, uniques = pd.factorize(df["problem_id"], sort=False)
    reps, rows = keys.shape
    draw = np.repeat(np.arange(reps), rows)
    code = np.tile(codes, reps)
    order = np.lexsort((keys.reshape(-1), code, draw))  # by draw, then problem, then key
    group = (draw * len(uniques) + code)[order]
    start = np.r_[0, np.flatnonzero(np.diff(group)) + 1]
    rank = np.arange(len(order)) - np.repeat(start, np.diff(np.r_[start, len(order)]))
    keep = np.sort(order[rank < n])
    out = df.iloc[keep % rows].copy()
    out["problem_id"] = (draw[keep] * len(uniques) + code[keep % rows]).astype(np.int64)
    return out, len(uniques)


def accuracy_vs_n(
    df: pd.DataFrame,
    method: Selector,
    ns: Iterable[int] | None = None,
    n_subsamples: int = 20,
    seed: int = 0,
) -> pd.DataFrame:
    """Accuracy of ``method`` when only ``n`` of the N candidates per problem are available.

    For each ``n`` (default 1, 2, 4, ..., plus N_max) draw ``n_subsamples`` random subsets of
    ``n`` candidates per problem (without replacement), apply the selector and score it. Returns
    ``DataFrame(n, accuracy, std)`` where ``std`` is across subsamples. At ``n = N_max`` every
    subset is the full set, so the result equals full-set selection exactly.

    The draws of one ``n`` are stacked into one frame, each (draw, problem) a problem of its own,
    and the selector runs once on it: selectors choose per problem (:mod:`impetus.selection.rules`),
    so this equals one call per draw, about 15x faster on the default run's curves.
    """
    n_max = int(df.groupby("problem_id").size().max())
    if ns is None:
        ns_list = [1 << k for k in range(int(np.log2(n_max)) + 1) if (1 << k) <= n_max]
        if ns_list[-1] != n_max:
            ns_list.append(n_max)
    else:
        ns_list = sorted({int(n) for n in ns})
    rng = np.random.default_rng(seed)
    rows = []
    for n in ns_list:
        if n >= n_max:  # the full set is the same for every draw: evaluate it once
            accs = np.array([float(selection_correct(df, method(df)).mean())])
        else:
            stacked, n_problems = _stacked_draws(df, n, rng.random((n_subsamples, len(df))))
            right = selection_correct(stacked, method(stacked))
            draw = right.index.to_numpy(dtype=np.int64) // n_problems
            accs = np.bincount(draw, weights=right.to_numpy(float), minlength=n_subsamples) / n_problems
        rows.append({"n": n, "accuracy": float(np.mean(accs)), "std": float(np.std(accs))})
    return pd.DataFrame(rows, columns=["n", "accuracy", "std"])


def _energy_col_of(name: str, method: Selector, df: pd.DataFrame) -> str | None:
    """The energy column a method ranks by: its name if a column, else a bound ``energy_col``."""
    if name in df.columns:
        return name
    col = getattr(method, "keywords", {}).get("energy_col") if hasattr(method, "keywords") else None
    return col if col in df.columns else None


def evaluate_methods(
    df: pd.DataFrame,
    methods: Mapping[str, Selector],
    n_boot: int,
    seed: int,
    alpha: float = 0.05,
    selections: Mapping[str, pd.Series] | None = None,
) -> dict[str, Any]:
    """Evaluate selectors on one candidates+energies frame (needs ``answer`` and ``correct``).

    Returns ``{"methods": {name: {...}}, "single", "majority", "oracle", "n_problems",
    "n_candidates", "n_rows"}`` where each method has ``accuracy``, ``ci`` [lo, hi],
    ``gain_vs_single`` (+ ``_ci``, ``_p``), ``gain_vs_majority`` (+ ``_ci``, ``_p``),
    ``gap_closure`` (None when oracle == majority), ``auroc`` (pooled over candidates) and
    ``auroc_within`` (:func:`within_problem_auroc`) for methods tied to an energy column (else
    None). ``selections`` (name -> chosen sample per problem) skips re-running the selectors. ``n_candidates`` is N (max candidates per problem);
    ``n_rows`` the total candidate count. Gains use the paired bootstrap over problems.
    """
    problems = pd.Index(sorted(df["problem_id"].unique()), name="problem_id")

    chosen = dict(selections or {})

    def correct_of(sel: Selector, name: str | None = None) -> np.ndarray:
        picked = chosen[name] if name in chosen else sel(df)
        return selection_correct(df, picked).reindex(problems).to_numpy(dtype=float)

    single = correct_of(select_first)
    major = correct_of(select_majority)
    orc = correct_of(_oracle_sel)
    acc_major, acc_orc = float(major.mean()), float(orc.mean())
    out: dict[str, Any] = {"methods": {}}
    for name, sel in methods.items():
        c = correct_of(sel, name)
        acc = float(c.mean())
        vs_single = paired_bootstrap(c, single, n_boot=n_boot, alpha=alpha, seed=seed)
        vs_major = paired_bootstrap(c, major, n_boot=n_boot, alpha=alpha, seed=seed)
        col = _energy_col_of(name, sel, df)
        out["methods"][name] = {
            "accuracy": acc,
            "ci": list(bootstrap_ci(c, n_boot=n_boot, alpha=alpha, seed=seed)),
            "gain_vs_single": vs_single["mean_diff"],
            "gain_vs_single_ci": [vs_single["lo"], vs_single["hi"]],
            "gain_vs_single_p": vs_single["p_value"],
            "gain_vs_majority": vs_major["mean_diff"],
            "gain_vs_majority_ci": [vs_major["lo"], vs_major["hi"]],
            "gain_vs_majority_p": vs_major["p_value"],
            "gap_closure": gap_closure(acc, acc_major, acc_orc),
            "auroc": auroc(df["correct"], df[col]) if col is not None else None,
            "auroc_within": within_problem_auroc(df, col) if col is not None else None,
        }
    out["single"] = float(single.mean())
    out["majority"] = acc_major
    out["oracle"] = acc_orc
    out["n_problems"] = int(len(problems))
    out["n_candidates"] = int(df.groupby("problem_id").size().max())
    out["n_rows"] = int(len(df))
    return out
