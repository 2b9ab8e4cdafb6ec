"""The V1 method set: baselines, the argmin of every energy, energy-weighted votes at chosen temperatures.

Shared by the dev-split and the cross-validated selection (:mod:`impetus.selection.crossval`) and
the report (:mod:`impetus.selection.report`), so every path builds the same methods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from impetus.selection.rules import Selector, get_selector, oracle, select_first, select_majority, selection_correct

BASELINES = ("first", "majority", "oracle")


def build_methods(energy_cols: Sequence[str], taus: Mapping[str, float]) -> dict[str, Selector]:
    """first, majority, argmin of every energy column, ``vote_<col>`` at ``taus[col]``, the oracle."""
    methods: dict[str, Selector] = {"first": select_first, "majority": select_majority}
    for col in energy_cols:
        methods[col] = get_selector("argmin", energy_col=col)
    for col, tau in taus.items():
        if col in energy_cols:
            methods[f"vote_{col}"] = get_selector("weighted_vote", energy_col=col, tau=tau)
    methods["oracle"] = oracle
    return methods


def choose_taus(df: pd.DataFrame, vote_cols: Sequence[str], tau_grid: Sequence[float]) -> dict[str, float]:
    """Per energy, the vote temperature with the best accuracy on ``df`` (ties: the larger, closer to majority)."""
    taus = {}
    for col in vote_cols:
        if col not in df.columns:
            continue
        acc = {t: float(selection_correct(df, get_selector("weighted_vote", energy_col=col, tau=t)(df)).mean())
               for t in tau_grid}
        best = max(acc.values())
        taus[col] = max(t for t, a in acc.items() if a >= best - 1e-12)
    return taus
