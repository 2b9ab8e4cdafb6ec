"""EBD against best-of-N and V1 at equal generated tokens (Kedro-free).

Per problem, ``chains`` MH chains start from the problem's first ``chains`` V1 candidates (any start
is allowed: the stationary distribution does not depend on it) and propose from the base model at
temperature 1 without truncation, as the derivation in :mod:`impetus.decoding.mh` requires. Two
EBD answers per problem: ``ebd_lowest`` (the lowest-energy state any chain visited) and
``ebd_vote`` (majority over the chains' final states, i.e. over samples of the tilted
distribution). Tokens = the starts' tokens + every proposed token; after ``s`` steps the same
accounting gives the accuracy-vs-tokens curve. V1 is matched at that budget by
:func:`impetus.selection.budget.compare_at_equal_tokens`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from impetus.decoding.mh import Chains, run_chains
from impetus.selection.budget import compare_at_equal_tokens, prefix_accuracy, v1_budget_curve
from impetus.selection.rules import Selector

Grade = Callable[[str, str], "tuple[str | None, bool]"]


def _vote(answers: list[str | None]) -> str | None:
    counts = Counter(a for a in answers if a is not None)
    return counts.most_common(1)[0][0] if counts else None


def chain_answers(chains: Chains, decode: Callable[[list[int]], str], pid: str, grade: Grade,
                  step: int | None = None) -> dict[str, Any]:
    """The two EBD answers of one problem from its chains (truncated at ``step`` if given)."""
    states = [s if step is None else s[: step + 1] for s in chains.states]
    energies = [e if step is None else e[: step + 1] for e in chains.energies]
    flat = [(e, y) for es, ys in zip(energies, states) for e, y in zip(es, ys)]
    lowest = min(flat, key=lambda t: t[0])[1]
    low_answer, low_ok = grade(pid, decode(lowest))
    finals = [grade(pid, decode(s[-1])) for s in states]
    vote = _vote([a for a, _ in finals])
    vote_ok = any(ok for a, ok in finals if a == vote) if vote is not None else False
    return {"ebd_lowest": (low_answer, low_ok, decode(lowest)), "ebd_vote": (vote, vote_ok, None)}


def run_problem(starts: list[list[int]], propose: Callable, energy: Callable, tau: float, block: int, steps: int,
                seed: int) -> Chains:
    """The chains of one problem (deterministic for a seed)."""
    return run_chains(starts, propose, energy, tau=tau, block=block, steps=steps, rng=np.random.default_rng(seed))


def summarize(
    rows: pd.DataFrame, curve_rows: pd.DataFrame, v1_df: pd.DataFrame, v1_methods: Mapping[str, Selector],
    compare_to: list[str], n_boot: int, seed: int,
) -> dict[str, Any]:
    """``ebd_metrics.json``: EBD methods, V1 methods at EBD's token budget, and the curves."""
    result = compare_at_equal_tokens(rows, v1_df, v1_methods, compare_to, "ebd",
                                     lambda g: {"acceptance_rate": float(g["acceptance_rate"].mean())}, n_boot, seed)
    problems = sorted(rows["problem_id"].unique())
    v1_sub = v1_df[v1_df["problem_id"].isin(problems)]
    curve = v1_budget_curve(v1_sub)
    result["v1_curves"] = {
        v1: [{"n": int(n), "tokens_per_problem": float(curve[n]),
              "accuracy": float(prefix_accuracy(v1_sub, v1_methods[v1], int(n)).mean())} for n in curve.index]
        for v1 in compare_to
    }
    result["ebd_curve"] = curve_rows.to_dict(orient="list")
    return result
