"""Out-of-fold learned energies over every train-side problem, for choosing methods by cross-validation.

:mod:`impetus.selection.crossval` scores every method on each fold of the train-side problems
(train + dev) with everything it learns fit on the other folds. Here the learned energies get
that treatment: for fold k, a TextEBM and a LatentEBM are fit on the groups mined from the other
folds (:func:`~impetus.learned.mining.mine_groups`, leakage-checked) and score fold k; then the
hybrid of fold k is fit on the other folds' mixed problems, with their (out-of-fold) EBM
energies as inputs, and scores fold k. The hybrid's training inputs on fold j came from EBMs that
saw fold k: a second-order dependence (stacking's usual shortcut, as in
:func:`~impetus.learned.fitting.out_of_fold_energies`) that cannot fit fold k's labels; exact
nesting would cost K(K-1)/2 more EBM fits.

Cost: K TextEBM and K LatentEBM ensembles of ``scorer.n_seeds`` members each (the seed members of
:mod:`impetus.learned.ensemble_fit`; no nested fold members), each fit on (K-1)/K of the train-side
groups, plus K hybrid fits (convex, L-BFGS; cheap). With K = 3 each fold fits on 2/3 of train + dev; the models measured
on eval are refit on all of it (:func:`final_fit_splits`), so the out-of-fold numbers describe
slightly smaller models than the ones measured.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from impetus.energy.registry import hybrid_inputs
from impetus.learned.ensemble_fit import fit_ensembles
from impetus.learned.fitting import KEYS, LearnedScorers, ScorerConfig, add_learned_energies, fit_hybrid, join_candidates
from impetus.learned.layers import resolve_source
from impetus.learned.mining import LeakageError, mine_groups

logger = logging.getLogger(__name__)

LEARNED = ("text_ebm", "latent_ebm", "hybrid")


def concat_hidden(hiddens: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The splits' pooled hidden-state records as one (rows appended in order); None if any is None."""
    if any(h is None for h in hiddens):
        return None
    keys = set.intersection(*(set(h) for h in hiddens))
    return {k: np.concatenate([np.asarray(h[k]) for h in hiddens]) for k in sorted(keys)}


def final_fit_splits(selection: str, train: Sequence[Any], dev: Sequence[Any]) -> list[Sequence[Any]]:
    """The splits the learned energies measured on eval are fit on, per selection rule.

    ``cv``: train + dev. Cross-validation chose the method on out-of-fold energies, so dev is no
    longer needed as held-out data, and refitting on every train-side problem (as cross-validation
    prescribes: choose out of fold, refit on all, measure once) gives the eval models the most data.
    ``dev``: train only, since the method is then chosen on the models' dev scores.
    ``train``/``dev`` are the per-split tuples a node holds (any fields, same order in both).
    """
    if selection == "cv":
        return [train, dev]
    if selection == "dev":
        return [train]
    raise ValueError(f"rerank_eval.selection must be 'cv' or 'dev', got {selection!r}")


def train_side_table(
    splits: Sequence[tuple[pd.DataFrame, pd.DataFrame, dict[str, Any] | None]], held_out: Iterable[Any],
) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """Train-side candidates (``(graded, energies, hidden)`` per split) joined into one table.

    Raises :class:`~impetus.learned.mining.LeakageError` if a ``held_out`` (eval) problem is among
    them: this table is the cross-validation's selection data.
    """
    graded = pd.concat([g for g, _, _ in splits], ignore_index=True)
    leaked = set(graded["problem_id"]) & set(held_out)
    if leaked:
        raise LeakageError(leaked)
    energies = pd.concat([e for _, e, _ in splits], ignore_index=True)
    hidden = concat_hidden([h for _, _, h in splits])
    return join_candidates(graded, energies, hidden), hidden


def _fold_ebms(groups: pd.DataFrame, problems: pd.DataFrame, hidden: dict | None, tokenizer: Any,
               config: ScorerConfig) -> LearnedScorers:
    """The fold's EBM ensembles: one member per training seed, fit on the other folds' groups."""
    source = config.hidden_source
    if hidden is not None:
        source, _ = resolve_source(config, groups, hidden)  # `cv`: chosen inside the fold (nested)
    return fit_ensembles(groups, problems, hidden, tokenizer, config, source)


def out_of_fold_table(
    df: pd.DataFrame, problems: pd.DataFrame, hidden: dict[str, Any] | None, tokenizer: Any, config: ScorerConfig,
    fold_of: pd.Series, held_out: Iterable[Any],
) -> tuple[pd.DataFrame, dict[str, float]]:
    """``df`` (train-side candidates) with ``text_ebm``, ``latent_ebm`` and ``hybrid`` out of fold.

    ``fold_of`` maps every problem of ``df`` to its fold. A fold whose other folds hold no problem
    with both a right and a wrong candidate gets NaN learned energies (argmin then falls back to
    the first sample). Returns the table (rows in ``df``'s (problem_id, sample_idx) order) and the
    seconds spent scoring each learned energy, summed over folds (the cost the report charges).
    """
    held_out = set(held_out)
    fold = df["problem_id"].map(fold_of).to_numpy()
    if np.isnan(fold.astype(float)).any():
        raise ValueError("some train-side problems have no fold")
    seconds = dict.fromkeys(LEARNED, 0.0)
    parts, mixed_of = [], {}
    for k in sorted(set(fold_of)):
        groups = mine_groups(df[fold != k], eval_ids=held_out)  # the leakage check where training data is formed
        mixed_of[k] = set(groups["problem_id"])
        held = df[fold == k]
        if groups.empty:
            logger.warning("CV fold %d: no mixed problem in the other folds; its learned energies are NaN", k)
            parts.append(held.assign(text_ebm=np.nan, latent_ebm=np.nan))
            continue
        scored, sec = add_learned_energies(held, problems, hidden, tokenizer, _fold_ebms(groups, problems, hidden, tokenizer, config))
        parts.append(scored)
        for name, s in sec.items():
            seconds[name] += s
    oof = pd.concat(parts).sort_values(KEYS, kind="mergesort").reset_index(drop=True)
    oof["hybrid"] = np.nan
    cols = config.hybrid_columns or hybrid_inputs(list(oof.columns))
    ofold = oof["problem_id"].map(fold_of).to_numpy()
    for k in sorted(set(fold_of)):
        train = oof[(ofold != k) & oof["problem_id"].isin(mixed_of[k])]
        if train.empty:
            continue
        hybrid, _ = fit_hybrid(train, cols, config.l2_grid, config.cross_fit_folds, config.seed)
        t0 = time.perf_counter()
        oof.loc[ofold == k, "hybrid"] = hybrid.energy(oof[ofold == k])
        seconds["hybrid"] += time.perf_counter() - t0
    return oof, seconds
