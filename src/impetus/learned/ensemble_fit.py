"""Fitting the learned energies as ensembles, and the hybrid over them (the scorer stage's core).

Each EBM (TextEBM, LatentEBM) is an :class:`~impetus.learned.ensemble.EnsembleEBM` of

- one member per training seed in ``scorer.seeds``, fit on all the training groups, and
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

from impetus.energy.registry import hybrid_inputs
from impetus.learned.ensemble import EnsembleEBM, build_ensemble
from impetus.learned.fitting import (
    KEYS, LearnedScorers, ScorerConfig, add_learned_energies, fit_hybrid, fit_latent_ebm, fit_text_ebm, hidden_matrix,
    text_inputs,
)
from impetus.learned.hybrid import group_folds
from impetus.learned.layers import resolve_source
from impetus.learned.train import TrainResult

__all__ = ["Members", "FitReport", "fit_ensembles", "fit_learned_energies"]


@dataclass
class Members:
    """The trained members of both ensembles, in ensemble order."""

    names: list[str]
    text: list[TrainResult]
    latent: list[TrainResult | None]
    trained_on: list[list[str] | None]  # a fold member's problems; None: all the ensemble's


@dataclass
class FitReport:
    """What :func:`fit_learned_energies` returns: the scorers (ensembles + hybrid) and how they were fit."""

    scorers: LearnedScorers
    members: Members
    hybrid_cv_loss: dict[float, float]
    hybrid_cols: list[str]


def _fit_member(rows: pd.DataFrame, problems: pd.DataFrame, hidden: dict | None, tokenizer: Any,
                config: ScorerConfig, source: str, seed: int, progress: bool) -> tuple[TrainResult, TrainResult | None]:
    text = fit_text_ebm(rows, problems, tokenizer, config.text_ebm.model,
                        replace(config.text_ebm.train, seed=seed, progress=progress))
    latent = None
    if hidden is not None:
        latent = fit_latent_ebm(rows, hidden, source, config.latent_ebm.model,
                                replace(config.latent_ebm.train, seed=seed, progress=progress))
    return text, latent


def fit_ensembles(groups: pd.DataFrame, problems: pd.DataFrame, hidden: dict | None, tokenizer: Any,
                  config: ScorerConfig, source: str, fold_members: bool, progress: bool = False,
                  ) -> tuple[LearnedScorers, Members, np.ndarray | None]:
    """The two EBM ensembles on ``groups`` (mined train groups), their members, and the fold of each
    row of ``groups`` (None without fold members); standardised on ``groups``' rows."""
    names: list[str] = []
    texts: list[TrainResult] = []
    latents: list[TrainResult | None] = []
    trained_on: list[list[str] | None] = []
    for i, seed in enumerate(config.seeds):
        text, latent = _fit_member(groups, problems, hidden, tokenizer, config, source, seed, progress and i == 0)
        names.append(f"seed{seed}")
        texts.append(text)
        latents.append(latent)
        trained_on.append(None)
    fold = None
    if fold_members:
        fold = group_folds(groups["problem_id"], config.cross_fit_folds, config.seed)
        for k in range(config.cross_fit_folds):
            rows = groups[fold != k]
            text, latent = _fit_member(rows, problems, hidden, tokenizer, config, source, config.seed, False)
            names.append(f"fold{k}")
            texts.append(text)
            latents.append(latent)
            trained_on.append(sorted(map(str, set(rows["problem_id"]))))
    members = Members(names, texts, latents, trained_on)
    return _ensembles(groups, problems, hidden, tokenizer, config, source, members), members, fold


def _ensembles(groups: pd.DataFrame, problems: pd.DataFrame, hidden: dict | None, tokenizer: Any,
               config: ScorerConfig, source: str, members: Members) -> LearnedScorers:
    """Both ensembles of ``members``, their scales measured on ``groups``' rows."""
    tokens = text_inputs(tokenizer, groups, problems, config.text_ebm.model["max_len"])
    text_ens = build_ensemble([t.model for t in members.text], tokens, members.names, members.trained_on, batch_size=64)
    latent_ens = None
    if hidden is not None:
        x = hidden_matrix(hidden, groups["hidden_row"].to_numpy(), source)
        latent_ens = build_ensemble([t.model for t in members.latent], x, members.names, members.trained_on,
                                    batch_size=1024)
    return LearnedScorers(text_ebm=text_ens, latent_ebm=latent_ens, hidden_source=source)


def _out_of_fold(groups: pd.DataFrame, problems: pd.DataFrame, hidden: dict | None, tokenizer: Any,
                 scorers: LearnedScorers, fold: np.ndarray, first_fold_member: int) -> pd.DataFrame:
    """``groups`` with each row's EBM energies from the fold member that did not see its problem."""
    parts = []
    for k in sorted(set(fold.tolist())):
        j = first_fold_member + k
        view = LearnedScorers(
            text_ebm=scorers.text_ebm.member(j) if isinstance(scorers.text_ebm, EnsembleEBM) else None,
            latent_ebm=scorers.latent_ebm.member(j) if isinstance(scorers.latent_ebm, EnsembleEBM) else None,
            hidden_source=scorers.hidden_source)
        scored, _ = add_learned_energies(groups[fold == k], problems, hidden, tokenizer, view)
        parts.append(scored)
    return pd.concat(parts).sort_values(KEYS, kind="mergesort").reset_index(drop=True)


def fit_learned_energies(
    groups: pd.DataFrame, problems: pd.DataFrame, hidden: dict[str, Any] | None, tokenizer: Any, config: ScorerConfig,
) -> FitReport:
    """Fit the TextEBM and LatentEBM ensembles and the hybrid on train groups only.

    The hybrid's learned-energy inputs are out of fold (each train problem scored by the fold member
    fit without it), so the combination weighs them as they behave on new problems; its L2 is
    chosen by group cross-validation on the same table.
    """
    n_problems = groups["problem_id"].nunique()
    if n_problems < config.cross_fit_folds:
        raise ValueError(
            f"cross-fitting needs at least {config.cross_fit_folds} training problems with a right and a wrong "
            f"candidate, got {n_problems}: raise ingest.n_train or sampling.n, or lower scorer.hybrid.cross_fit_folds")
    source, source_cv = resolve_source(config, groups, hidden)  # `cv`: chosen on these groups alone
    scorers, members, fold = fit_ensembles(groups, problems, hidden, tokenizer, config, source,
                                           fold_members=True, progress=config.progress)
    oof = _out_of_fold(groups, problems, hidden, tokenizer, scorers, fold, len(config.seeds))
    if not config.fold_members:  # fit for the hybrid's out-of-fold inputs only: the ensembles keep the seed members
        n = len(config.seeds)
        members = Members(members.names[:n], members.text[:n], members.latent[:n], members.trained_on[:n])
        scorers = _ensembles(groups, problems, hidden, tokenizer, config, source, members)
    cols = config.hybrid_columns or hybrid_inputs(list(oof.columns))
    hybrid, cv_loss = fit_hybrid(oof, cols, config.l2_grid, config.cross_fit_folds, config.seed)
    scorers.hybrid, scorers.hidden_cv = hybrid, source_cv
    return FitReport(scorers, members, cv_loss, hybrid.cols)
