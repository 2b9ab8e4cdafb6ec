"""Turning energies into a choice (argmin, energy-weighted vote, majority) and evaluation maths.

Plots live in :mod:`impetus.selection.plots` (imported explicitly: it pulls in matplotlib).
"""

from impetus.selection.metrics import (
    accuracy_vs_n,
    auroc,
    bootstrap_ci,
    evaluate_methods,
    within_problem_auroc,
    gap_closure,
    paired_bootstrap,
)
from impetus.selection.rules import (
    METHODS,
    get_selector,
    majority_index,
    oracle,
    select_argmin,
    select_first,
    select_majority,
    select_weighted_vote,
    selection_correct,
    vote_winners,
)

__all__ = [
    "METHODS",
    "accuracy_vs_n",
    "auroc",
    "bootstrap_ci",
    "evaluate_methods",
    "within_problem_auroc",
    "gap_closure",
    "get_selector",
    "majority_index",
    "oracle",
    "paired_bootstrap",
    "select_argmin",
    "select_first",
    "select_majority",
    "select_weighted_vote",
    "selection_correct",
    "vote_winners",
]
