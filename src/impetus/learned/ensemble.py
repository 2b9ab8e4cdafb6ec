"""Ensembles of learned energies: the mean of K standardised members (issue 25).

One EBM training run is a draw: on the mixed addition/subtraction testbed the LatentEBM alone
scored 23.5%, 27.5% and 29.0% on eval for three training seeds on the same candidates, and the
method chosen by cross-validation moved by 3.5 points with it. Averaging members trained with
different seeds (and on different folds) removes most of that draw, as deep ensembles do
(Lakshminarayanan et al., NeurIPS 2017), at the price of K forward passes per candidate.

An energy is only defined up to a monotone map, so members are put on one scale before averaging:
member ``m``'s energy is standardised, ``z_m = (E_m - mu_m) / sd_m``, with its mean and standard
deviation over the *reference rows* (the ensemble's training rows), and the mean of the ``z_m`` is
standardised once more on the same rows, so an ensemble and a single standardised member (the
hybrid's out-of-fold inputs, :mod:`impetus.learned.fitting`) are on the same scale.

Fold members (fit on K-1 folds of the training problems for the cross-fitting) carry the problems
they were trained on: when the ensemble scores rows with problem ids (:func:`ensemble_scores`), a
fold member never scores a problem it saw; the mean is over the members that did not. ``forward``
(what V2's gradient and ``torch.export`` see) averages every member: it has no problem ids.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from impetus.learned.models import score
from impetus.selection.rules import select_argmin, selection_correct

__all__ = ["EnsembleEBM", "build_ensemble", "ensemble_scores", "energy_scores", "member_accuracy", "top1_accuracy"]


class EnsembleEBM(nn.Module):
    """Mean of standardised member EBMs (all of one kind and config), standardised again.

    ``trained_on[m]``: the problem ids member ``m`` was fit on when that is a strict part of the
    ensemble's training problems (a fold member), else None (a member fit on all of them).
    """

    def __init__(self, members: Sequence[nn.Module], mu: Sequence[float], sd: Sequence[float],
                 out: tuple[float, float] = (0.0, 1.0), names: Sequence[str] | None = None,
                 trained_on: Sequence[Sequence[str] | None] | None = None) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        kinds = {type(m).__name__ for m in members}
        if len(kinds) > 1:
            raise ValueError(f"ensemble members must be of one kind, got {sorted(kinds)}")
        self.members = nn.ModuleList(members)
        self.register_buffer("mu", torch.as_tensor(np.asarray(mu, np.float32)))
        self.register_buffer("sd", torch.as_tensor(np.asarray(sd, np.float32)))
        self.register_buffer("out", torch.as_tensor(np.asarray(out, np.float32)))
        if not (len(self.mu) == len(self.sd) == len(members)):
            raise ValueError(f"{len(members)} members but {len(self.mu)} means and {len(self.sd)} deviations")
        self.names = list(names) if names is not None else [f"member{i}" for i in range(len(members))]
        trained = list(trained_on) if trained_on is not None else [None] * len(members)
        self.trained_on = [None if t is None else frozenset(map(str, t)) for t in trained]

    @property
    def config(self) -> Any:
        """The members' config (one for all), so callers sizing inputs treat it as one EBM."""
        return self.members[0].config

    @property
    def member_kind(self) -> str:
        return type(self.members[0]).__name__

    def __len__(self) -> int:
        return len(self.members)

    def member_energies(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``[B, K]``: every member's standardised energy ``z_m`` (inputs as :meth:`forward`)."""
        inputs = (x,) if mask is None else (x, mask)
        raw = torch.stack([m(*inputs) for m in self.members], dim=1)
        return (raw - self.mu) / self.sd

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``[B]``: the standardised mean over all members (differentiable in the inputs). ``x``: a
        LatentEBM's states ``[B, H]``, or a TextEBM's token ids with their attention ``mask``.
        Explicit arguments, not ``*inputs``, so ``torch.export`` sees the members' signature."""
        return (self.member_energies(x, mask).mean(dim=1) - self.out[0]) / self.out[1]


def _scale(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation (1 where it is 0 or undefined) of finite values."""
    v = values[np.isfinite(values)]
    if not len(v):
        return 0.0, 1.0
    sd = float(v.std())
    return float(v.mean()), sd if sd > 0 and np.isfinite(sd) else 1.0


def build_ensemble(members: Sequence[nn.Module], reference: Any, names: Sequence[str] | None = None,
                   trained_on: Sequence[Sequence[str] | None] | None = None, batch_size: int = 256) -> EnsembleEBM:
    """An :class:`EnsembleEBM` whose scales are measured on ``reference`` (row-indexable inputs of
    the ensemble's training rows, as :func:`impetus.learned.models.score` takes)."""
    raw = np.stack([score(m, reference, batch_size=batch_size) for m in members], axis=1)
    mu, sd = zip(*(_scale(raw[:, j]) for j in range(raw.shape[1])))
    z = (raw - np.asarray(mu)) / np.asarray(sd)
    ens = EnsembleEBM(members, mu, sd, out=_scale(z.mean(axis=1)), names=names, trained_on=trained_on)
    return ens.eval()


def ensemble_scores(ens: EnsembleEBM, inputs: Any, problem_ids: Sequence[Any] | None = None,
                    batch_size: int = 256, held_out: bool = False, dtype: str = "float32",
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(energy [N], z [N, K])`` for every row of ``inputs``. With ``problem_ids``, a member's
    ``z`` is NaN on the problems it was trained on (fold members), and the energy is the mean over
    the others; without, every member counts (as in ``forward``).

    ``held_out`` (with ``problem_ids``): the seed members, fit on every training problem, count as
    having seen each problem some fold member was fit on, so a training problem is scored by the one
    fold member that held it out, on that member's standardised scale ``z`` (the scale the hybrid was
    fit on, :mod:`impetus.learned.ensemble_fit`). A problem no member saw (eval) is scored as usual.
    This is how dev problems, on which V2, EBD and the compute-matched choice pick their settings,
    get energies no member was fit on. ``dtype``: as :func:`~impetus.learned.models.score`'s."""
    z = np.stack([(score(m, inputs, batch_size=batch_size, dtype=dtype) - float(ens.mu[j])) / float(ens.sd[j])
                  for j, m in enumerate(ens.members)], axis=1)
    seed_seen = np.zeros(len(z), dtype=bool)  # rows whose problem the seed members were fit on
    if problem_ids is not None:
        pids = np.asarray(problem_ids).astype(str)
        for j, seen in enumerate(ens.trained_on):
            if seen:
                z[np.isin(pids, list(seen)), j] = np.nan
        if held_out:
            folds = [s for s in ens.trained_on if s]
            if not folds:
                raise ValueError("held-out scoring needs the ensemble's fold members (scorer.fold_members: true)")
            seed_seen = np.isin(pids, list(frozenset().union(*folds)))
            z[np.ix_(seed_seen, [j for j, s in enumerate(ens.trained_on) if not s])] = np.nan
    elif held_out:
        raise ValueError("held-out scoring needs the rows' problem ids")
    if np.isnan(z).all(axis=1).any():
        raise ValueError("some rows have no ensemble member that was not trained on their problem")
    mean = np.nanmean(z, axis=1) if np.isnan(z).any() else z.mean(axis=1)
    energy = (mean - float(ens.out[0])) / float(ens.out[1])
    return np.where(seed_seen, mean, energy), z


def energy_scores(model: nn.Module, inputs: Any, problem_ids: Sequence[Any] | None = None,
                  batch_size: int = 256, held_out: bool = False, dtype: str = "float32",
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Energies of any learned EBM: an ensemble through :func:`ensemble_scores` (with its members'
    ``z``), a single model through :func:`~impetus.learned.models.score` (members: None; it has no
    held-out member, so ``held_out`` raises). ``dtype``: as ``score``'s."""
    if isinstance(model, EnsembleEBM):
        return ensemble_scores(model, inputs, problem_ids, batch_size, held_out, dtype)
    if held_out:
        raise ValueError("held-out scoring needs an ensemble with fold members, not a single model")
    return score(model, inputs, batch_size=batch_size, dtype=dtype), None


def top1_accuracy(energy: np.ndarray, df: pd.DataFrame) -> float:
    """Share of ``df``'s problems (``problem_id``, ``sample_idx``, ``correct``) whose lowest-energy row
    is right (:func:`~impetus.selection.rules.select_argmin`); rows with a NaN energy (a fold member on
    its own problems) are left out, and so is a problem with no other row."""
    finite = np.isfinite(np.asarray(energy, float))
    if not finite.any():
        return float("nan")
    rows = df.loc[finite, ["problem_id", "sample_idx", "correct"]].assign(_energy=np.asarray(energy, float)[finite])
    return float(selection_correct(rows, select_argmin(rows, "_energy")).mean())


def member_accuracy(z: np.ndarray, df: pd.DataFrame, names: Sequence[str], ensemble: np.ndarray) -> dict[str, Any]:
    """Top-1 accuracy over ``df``'s problems (``problem_id``, ``sample_idx``, ``correct``; rows aligned with ``z``)
    of each member, their mean and spread, the ``ensemble`` energy's, and its gain over the
    average member (issue 25's report)."""
    acc = {name: top1_accuracy(z[:, j], df) for j, name in enumerate(names)}
    values = np.array([v for v in acc.values() if np.isfinite(v)])
    mean = float(values.mean()) if len(values) else float("nan")
    whole = top1_accuracy(ensemble, df)
    return {"members": acc, "n_members": len(names), "member_mean": mean,
            "member_min": float(values.min()) if len(values) else float("nan"),
            "member_max": float(values.max()) if len(values) else float("nan"),
            "member_std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "ensemble": whole, "gain_over_mean_member": whole - mean}


def ensembles_markdown(summary: dict[str, dict[str, Any]]) -> str:
    """The report's section on the learned ensembles (empty when there are none)."""
    if not summary:
        return ""
    lines = ["", "## Learned energies as ensembles", "",
             "Each learned EBM averages its standardised members (one per training seed, fit on all train "
             "groups, and the cross-fit fold members). Top-1 accuracy on eval:", "",
             "| energy | members | member mean % | member min–max % | member SD (pts) | ensemble % | "
             "ensemble − mean member (pts) |", "|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['n_members']} | {100 * s['member_mean']:.1f} | {100 * s['member_min']:.1f}–"
                     f"{100 * s['member_max']:.1f} | {100 * s['member_std']:.1f} | {100 * s['ensemble']:.1f} | "
                     f"{100 * s['gain_over_mean_member']:+.1f} |")
    return "\n".join(lines) + "\n"
