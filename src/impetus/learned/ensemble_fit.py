"""Fitting the learned energies as ensembles, and the hybrid over them (the scorer stage's core).

Each EBM (TextEBM, LatentEBM) is an :class:`~impetus.learned.ensemble.EnsembleEBM` of

- one member per training seed (``scorer.seed`` … ``scorer.seed + scorer.n_seeds - 1``), fit on all the
  training groups, and
- the cross-fit fold members (``scorer.hybrid.cross_fit_folds`` of them, first seed), each fit on
  the other folds' problems: they exist anyway, since the hybrid is fit on out-of-fold EBM energies
  (a combination fit on in-sample scores would over-trust them), so they join the ensemble for free
  (``scorer.fold_members: false`` keeps them out: with ``n_seeds: 1`` that is one model, the control).

The hybrid is then fit on the fold members' out-of-fold energies (each on its standardised scale,
the scale of the ensemble's output) and applied to the ensembles' energies. The hybrid itself is
one convex fit (L-BFGS, deterministic), so its spread across training seeds comes from its inputs.

In cross-validation (:mod:`impetus.learned.crossfit`) a fold's ensemble has the seed members only
(fit on the other folds): nesting fold members inside every fold would cost K(K-1) more fits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from impetus.energy.registry import hybrid_inputs
from impetus.learned.ensemble import build_ensemble
from impetus.learned.fitting import (
    LearnedScorers, ScorerConfig, fit_hybrid, fit_latent_ebm, fit_text_ebm, hidden_matrix, out_of_fold_energies,
    text_inputs,
)
from impetus.learned.hybrid import group_folds
from impetus.learned.layers import resolve_source
from impetus.learned.train import TrainResult

__all__ = ["Members", "FitReport", "ensembles", "fit_ensembles", "fit_learned_energies"]


@dataclass
class Members:
    """The trained members of both ensembles, in ensemble order."""

    names: list[str]
    text: list[TrainResult]
    latent: list[TrainResult | None]
    trained_on: list[list[str] | None]  # a fold member's problems; None: all the ensemble's

    def add(self, name: str, text: TrainResult, latent: TrainResult | None, trained_on: list[str] | None) -> None:
        self.names.append(name)
        self.text.append(text)
        self.latent.append(latent)
        self.trained_on.append(trained_on)

    def __add__(self, other: "Members") -> "Members":
        return Members(self.names + other.names, self.text + other.text, self.latent + other.latent,
                       self.trained_on + other.trained_on)


@dataclass
class FitReport:
    """What :func:`fit_learned_energies` returns: the scorers (ensembles + hybrid) and how they were fit."""

    scorers: LearnedScorers
    members: Members
    hybrid_cv_loss: dict[float, float]


def _fit_member(rows: pd.DataFrame, problems: pd.DataFrame, hidden: dict | None, tokenizer: Any,
                config: ScorerConfig, source: str, seed: int, progress: bool) -> tuple[TrainResult, TrainResult | None]:
    text = fit_text_ebm(rows, problems, tokenizer, config.text_ebm.model,
                        replace(config.text_ebm.train, seed=seed, progress=progress))
    latent = None
    if hidden is not None:
        latent = fit_latent_ebm(rows, hidden, source, config.latent_ebm.model,
                                replace(config.latent_ebm.train, seed=seed, progress=progress))
    return text, latent


def _seed_members(groups: pd.DataFrame, problems: pd.DataFrame, hidden: dict | None, tokenizer: Any,
                  config: ScorerConfig, source: str, progress: bool) -> Members:
    """One member of each EBM per training seed, fit on all of ``groups``."""
    members = Members([], [], [], [])
    for i, seed in enumerate(config.seeds):
        text, latent = _fit_member(groups, problems, hidden, tokenizer, config, source, seed, progress and i == 0)
        members.add(f"seed{seed}", text, latent, None)
    return members


def ensembles(groups: pd.DataFrame, problems: pd.DataFrame, hidden: dict | None, tokenizer: Any,
              config: ScorerConfig, source: str, members: Members) -> LearnedScorers:
    """Both ensembles of ``members``, their scales measured on ``groups``' rows."""
    tokens = text_inputs(tokenizer, groups, problems, config.text_ebm.model["max_len"])
    text_ens = build_ensemble([t.model for t in members.text], tokens, members.names, members.trained_on, batch_size=64)
    latent_ens = None
    if hidden is not None:
        x = hidden_matrix(hidden, groups["hidden_row"].to_numpy(), source)
        latent_ens = build_ensemble([t.model for t in members.latent], x, members.names, members.trained_on,
                                    batch_size=1024)
    return LearnedScorers(text_ebm=text_ens, latent_ebm=latent_ens, hidden_source=source, text_dtype=config.text_dtype)


def fit_ensembles(groups: pd.DataFrame, problems: pd.DataFrame, hidden: dict | None, tokenizer: Any,
                  config: ScorerConfig, source: str, progress: bool = False) -> LearnedScorers:
    """The two EBM ensembles of the seed members alone on ``groups`` (a cross-validation fold's)."""
    members = _seed_members(groups, problems, hidden, tokenizer, config, source, progress)
    return ensembles(groups, problems, hidden, tokenizer, config, source, members)


def _standardised(oof: pd.DataFrame, scorers: LearnedScorers, config: ScorerConfig, first: int) -> pd.DataFrame:
    """The out-of-fold EBM energies put on their fold member's standardised scale (the ensemble's),
    in float32 as the member's module computes it."""
    j = first + group_folds(oof["problem_id"], config.cross_fit_folds, config.seed)  # the same folds as the fit
    out = oof.copy()
    for name in ("text_ebm", "latent_ebm"):
        ens = getattr(scorers, name)
        if ens is not None and name in out:
            raw, k = torch.as_tensor(out[name].to_numpy(np.float32)), torch.as_tensor(j)
            out[name] = ((raw - ens.mu[k]) / ens.sd[k]).numpy().astype(float)
    return out


def fit_learned_energies(
    groups: pd.DataFrame, problems: pd.DataFrame, hidden: dict[str, Any] | None, tokenizer: Any, config: ScorerConfig,
) -> FitReport:
    """Fit the TextEBM and LatentEBM ensembles and the hybrid on train groups only.

    The hybrid's learned-energy inputs are out of fold (each train problem scored by the fold member
    fit without it, :func:`~impetus.learned.fitting.out_of_fold_energies`), so the combination weighs
    them as they behave on new problems; its L2 is chosen by group cross-validation on the same table.
    """
    source, source_cv = resolve_source(config, groups, hidden)  # `cv`: chosen on these groups alone
    seeds = _seed_members(groups, problems, hidden, tokenizer, config, source, config.progress)
    folds = Members([], [], [], [])

    def fit_fold(rows: pd.DataFrame) -> LearnedScorers:  # called once per fold, in fold order
        text, latent = _fit_member(rows, problems, hidden, tokenizer, config, source, config.seed, False)
        folds.add(f"fold{len(folds.names)}", text, latent, sorted(map(str, set(rows["problem_id"]))))
        return LearnedScorers(text_ebm=text.model, latent_ebm=None if latent is None else latent.model,
                              hidden_source=source, text_dtype=config.text_dtype)

    oof = out_of_fold_energies(groups, problems, hidden, tokenizer, fit_fold, config.cross_fit_folds, config.seed)
    members = seeds + folds
    scorers = ensembles(groups, problems, hidden, tokenizer, config, source, members)
    oof = _standardised(oof, scorers, config, len(seeds.names))
    if not config.fold_members:  # fit for the hybrid's out-of-fold inputs only: the ensembles keep the seed members
        members = seeds
        scorers = ensembles(groups, problems, hidden, tokenizer, config, source, members)
    cols = config.hybrid_columns or hybrid_inputs(list(oof.columns))
    hybrid, cv_loss = fit_hybrid(oof, cols, config.l2_grid, config.cross_fit_folds, config.seed)
    scorers.hybrid, scorers.hidden_cv = hybrid, source_cv
    return FitReport(scorers, members, cv_loss)
