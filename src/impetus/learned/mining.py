"""Mining training groups for learned energies.

A pairwise (Bradley–Terry style) energy loss only has signal on problems with at least one right
and one wrong candidate, so EORM (arXiv:2505.14999) trains on exactly those groups. All candidates
of such a problem are kept: the loss compares every right with every wrong one.

Hard negatives (wrong candidates that a training-free energy already ranks among the right ones)
follow the hard-negative mining idea of contrastive retrieval (e.g. Robinson et al., "Contrastive
Learning with Hard Negative Samples", arXiv:2010.04592); they are reported / optionally up-weighted.
"""

from __future__ import annotations

from typing import Any, Iterable

import pandas as pd

__all__ = ["LeakageError", "mine_groups", "group_stats", "hard_negative_mask"]


class LeakageError(ValueError):
    """Raised when evaluation problems appear in data used to train a scorer."""

    def __init__(self, ids: Iterable[Any]):
        self.ids = sorted(ids, key=str)
        shown = ", ".join(map(str, self.ids[:20])) + (" ..." if len(self.ids) > 20 else "")
        super().__init__(f"{len(self.ids)} eval problem_id(s) found in training data: {shown}")


def _label_counts(graded: pd.DataFrame, label_col: str) -> pd.DataFrame:
    y = graded[label_col].astype(bool)
    g = y.groupby(graded["problem_id"])
    return pd.DataFrame({"n_pos": g.sum(), "n": g.size()}).assign(n_neg=lambda d: d["n"] - d["n_pos"])


def mine_groups(
    graded: pd.DataFrame, eval_ids: Iterable[Any] | None = None, label_col: str = "correct"
) -> pd.DataFrame:
    """All candidates of problems with >=1 right and >=1 wrong candidate.

    Raises :class:`LeakageError` (naming the ids) if any ``eval_ids`` occur in ``graded`` — the
    train/eval disjointness invariant is checked here, where training data is formed.
    Output is sorted by (problem_id, sample_idx) with a fresh index.
    """
    if eval_ids is not None:
        leaked = set(graded["problem_id"].unique()) & set(eval_ids)
        if leaked:
            raise LeakageError(leaked)
    c = _label_counts(graded, label_col)
    mixed = c.index[(c["n_pos"] > 0) & (c["n_neg"] > 0)]
    out = graded[graded["problem_id"].isin(mixed)]
    return out.sort_values(["problem_id", "sample_idx"], kind="mergesort").reset_index(drop=True)


def group_stats(groups: pd.DataFrame, label_col: str = "correct") -> dict[str, float | int]:
    """Counts for reporting. Pass the full ``graded`` frame to also see how many problems were
    dropped as all-right / all-wrong (on mined groups those two are 0 by construction).

    ``n_pos``/``n_neg``/``pos_share`` count candidates inside usable (mixed) groups only.
    """
    c = _label_counts(groups, label_col)
    mixed = (c["n_pos"] > 0) & (c["n_neg"] > 0)
    n_pos = int(c.loc[mixed, "n_pos"].sum())
    n_neg = int(c.loc[mixed, "n_neg"].sum())
    return {
        "n_groups": int(mixed.sum()),
        "n_pos": n_pos,
        "n_neg": n_neg,
        "pos_share": float(n_pos / (n_pos + n_neg)) if n_pos + n_neg else float("nan"),
        "n_problems_all_right": int((c["n_neg"] == 0).sum()),
        "n_problems_all_wrong": int((c["n_pos"] == 0).sum()),
    }


def hard_negative_mask(groups: pd.DataFrame, energy_col: str, label_col: str = "correct") -> pd.Series:
    """True for wrong candidates whose ``energy_col`` is below the median energy of the right
    candidates in their group (i.e. the training-free energy would prefer them). NaN -> False."""
    y = groups[label_col].astype(bool)
    e = groups[energy_col].astype(float)
    right_median = e.where(y).groupby(groups["problem_id"]).transform("median")
    mask = (~y) & e.notna() & right_median.notna() & (e < right_median)
    return mask.rename("hard_negative").astype(bool)
