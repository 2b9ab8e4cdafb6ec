"""Hybrid energy: a learned linear combination of energy columns.

``E_hybrid(x) = sum_c w_c * z_c(x)`` where ``z_c`` is column ``c`` standardized with the *train*
mean/std and clipped to the range it had in training (answers unlike any training candidate, such
as V2's forced edits, would otherwise be scored by extrapolation). Weights are fit on train groups with the same group-wise pairwise loss as the EBMs
(EORM, arXiv:2505.14999; RankNet, Burges et al. 2005) plus an L2 penalty. With a linear model the
loss is a logistic regression on within-group (right - wrong) feature differences — convex, so
L-BFGS finds the unique optimum deterministically. No bias: it cancels in every pair.

Because every input column follows the lower-is-better contract, a useful column gets ``w_c > 0``;
``weights`` (in standardized units, so comparable across columns) is what the report shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

__all__ = ["HybridConfig", "HybridEnergy", "pair_index", "cross_validated_l2"]


@dataclass
class HybridConfig:
    l2: float  # on standardized weights; keeps collinear columns from blowing up (YAML: l2_grid)
    max_iter: int = 200


def pair_index(group_ids: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All within-group (right, wrong) pairs as ``(i_right, j_wrong, weight)``.

    ``weight = 1 / (n_pairs_in_group * n_groups_with_pairs)``, so ``sum(weight * loss_pair)`` is
    exactly ``ebm.pairwise_loss`` (mean over groups of mean over pairs) without an ``M x M`` mask —
    the whole train set fits in one full batch.
    """
    g = np.asarray(group_ids)
    y = np.asarray(labels, dtype=bool)
    ii, jj, ww = [], [], []
    for gid in pd.unique(g):
        rows = np.flatnonzero(g == gid)
        r, w = rows[y[rows]], rows[~y[rows]]
        if r.size and w.size:
            a, b = np.meshgrid(r, w, indexing="ij")
            ii.append(a.ravel())
            jj.append(b.ravel())
            ww.append(np.full(a.size, 1.0 / a.size))
    if not ii:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    weights = np.concatenate(ww) / len(ii)
    return np.concatenate(ii), np.concatenate(jj), weights


@dataclass
class HybridEnergy:
    """Linear combination of energy columns fit with the pairwise loss. NaN-safe: missing values
    are filled with the train mean (``z = 0``, i.e. "no evidence") at fit and at scoring time."""

    config: HybridConfig
    cols: list[str] = field(default_factory=list)
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    coef: np.ndarray | None = None
    train_loss: float | None = None
    lo: np.ndarray | None = None  # each column's lowest and highest standardised value in training
    hi: np.ndarray | None = None

    def _z(self, df: pd.DataFrame) -> np.ndarray:
        x = df[self.cols].to_numpy(dtype=float)
        x = np.where(np.isnan(x), self.mean[None, :], x)
        z = (x - self.mean[None, :]) / self.std[None, :]
        # A linear energy must not extrapolate: a V2 edit that forces an unlikely answer token has a
        # neg_logprob_answer hundreds of training deviations out, and a small weight then decides alone.
        return z if self.lo is None else np.clip(z, self.lo[None, :], self.hi[None, :])

    def fit(
        self, df: pd.DataFrame, cols: Sequence[str], group_col: str = "problem_id", label_col: str = "correct"
    ) -> "HybridEnergy":
        """Fit weights on ``df`` (train groups only — the caller guarantees no eval problems)."""
        self.cols = list(cols)
        x = df[self.cols].to_numpy(dtype=float)
        mean = np.nanmean(np.where(np.isfinite(x), x, np.nan), axis=0) if len(x) else np.zeros(len(cols))
        mean = np.nan_to_num(mean, nan=0.0)  # an all-NaN column contributes nothing
        std = np.nanstd(np.where(np.isnan(x), mean[None, :], x), axis=0)
        self.mean, self.std = mean, np.where((std > 0) & np.isfinite(std), std, 1.0)
        self.lo = self.hi = None
        raw = self._z(df)
        finite = np.where(np.isfinite(raw), raw, np.nan)
        self.lo = np.nan_to_num(np.nanmin(finite, axis=0), nan=0.0) if len(raw) else np.zeros(len(cols))
        self.hi = np.nan_to_num(np.nanmax(finite, axis=0), nan=0.0) if len(raw) else np.zeros(len(cols))
        z = torch.as_tensor(self._z(df), dtype=torch.float64)
        i, j, w = pair_index(df[group_col].to_numpy(), df[label_col].to_numpy(dtype=bool))
        if i.size == 0:
            raise ValueError("no (right, wrong) pair in any group: cannot fit a hybrid energy")
        diff = z[torch.as_tensor(i)] - z[torch.as_tensor(j)]  # want (E_right - E_wrong) < 0
        wt = torch.as_tensor(w, dtype=torch.float64)
        theta = torch.zeros(len(self.cols), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([theta], max_iter=self.config.max_iter, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = (wt * F.softplus(diff @ theta)).sum() + self.config.l2 * (theta**2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.coef = theta.detach().numpy().copy()
        with torch.no_grad():
            self.train_loss = float((wt * F.softplus(diff @ theta)).sum())
        return self

    def energy(self, df: pd.DataFrame) -> np.ndarray:
        """Hybrid energy per row (lower = better)."""
        if self.coef is None:
            raise RuntimeError("HybridEnergy.fit must be called first")
        return self._z(df) @ self.coef

    def to_dict(self) -> dict:
        """Plain record (lists and floats; no pickle needed), inverse of :meth:`from_dict`."""
        if self.coef is None:
            raise RuntimeError("HybridEnergy.fit must be called before saving")
        return {
            "format": 1, "kind": "HybridEnergy", "l2": float(self.config.l2), "max_iter": int(self.config.max_iter),
            "cols": list(self.cols), "mean": self.mean.tolist(), "std": self.std.tolist(),
            "coef": self.coef.tolist(), "train_loss": self.train_loss,
            **({"lo": self.lo.tolist(), "hi": self.hi.tolist()} if self.lo is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "HybridEnergy":
        """Rebuild a fitted hybrid from :meth:`to_dict` output."""
        return cls(
            config=HybridConfig(l2=d["l2"], max_iter=d["max_iter"]), cols=list(d["cols"]),
            mean=np.asarray(d["mean"], float), std=np.asarray(d["std"], float),
            coef=np.asarray(d["coef"], float), train_loss=d.get("train_loss"),
            lo=np.asarray(d["lo"], float) if "lo" in d else None, hi=np.asarray(d["hi"], float) if "hi" in d else None,
        )

    @property
    def weights(self) -> dict[str, float]:
        """Weight per column in standardized units (positive = column helps as lower-is-better)."""
        if self.coef is None:
            return {}
        return {c: float(w) for c, w in zip(self.cols, self.coef)}


def group_folds(groups: pd.Series, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of each row: its group's, after the distinct sorted groups are shuffled
    by ``seed`` and dealt round-robin, so a group's rows never straddle two folds."""
    ids = np.random.default_rng(seed).permutation(np.sort(groups.unique()))
    return groups.map(pd.Series(np.arange(len(ids)) % folds, index=ids)).to_numpy()


def cross_validated_l2(
    df: pd.DataFrame, cols: Sequence[str], l2_grid: Sequence[float], folds: int, seed: int,
    group_col: str = "problem_id", label_col: str = "correct",
) -> tuple[float, dict[float, float]]:
    """The L2 strength with the lowest held-out pairwise loss over ``folds`` group folds.

    Chosen on train groups only: each fold's loss is measured on problems the fit did not see, so
    a small train set gets a stronger penalty instead of over-fitting its few groups. Ties go to
    the stronger penalty (the simpler model). Returns ``(l2, {l2: mean held-out loss})``.
    """
    fold = group_folds(df[group_col], folds, seed)
    losses: dict[float, float] = {}
    for l2 in l2_grid:
        held = []
        for k in range(folds):
            train, test = df[fold != k], df[fold == k]
            try:
                model = HybridEnergy(config=HybridConfig(l2=float(l2))).fit(train, cols, group_col, label_col)
            except ValueError:  # a fold with no (right, wrong) pair to fit on
                continue
            i, j, w = pair_index(test[group_col].to_numpy(), test[label_col].to_numpy(dtype=bool))
            if i.size:
                e = model.energy(test)
                held.append(float((w * np.logaddexp(0.0, e[i] - e[j])).sum()))
        losses[float(l2)] = float(np.mean(held)) if held else float("inf")
    best = min(losses.values())
    chosen = max(l2 for l2, loss in losses.items() if loss <= best + 1e-12)
    return chosen, losses
