"""EBD against best-of-N and V1 at equal generated tokens (Kedro-free).

Per problem, ``chains`` MH chains start from the problem's first ``chains`` V1 candidates (any start
is allowed: the stationary distribution does not depend on it) and propose from the base model at
temperature 1 without truncation, as the derivation in :mod:`impetus.decoding.mh` requires. Two
EBD answers per problem: ``ebd_lowest`` (the lowest-energy state any chain visited) and
``ebd_vote`` (majority over the chains' final states, i.e. over samples of the tilted
distribution). The chains of many problems are proposed in one batch (:func:`run_problems`).
Tokens = the starts' tokens + every proposed token; after ``s`` steps the same
accounting gives the accuracy-vs-tokens curve. V1 is matched at that budget by
:func:`impetus.selection.budget.compare_at_equal_tokens`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from impetus.decoding.mh import Chains, run_chains
from impetus.decoding.proposals import Proposer
from impetus.selection.budget import compare_at_equal_tokens, prefix_accuracy, v1_budget_curve
from impetus.selection.rules import Selector

if TYPE_CHECKING:
    from impetus.config import EBDParams
    from impetus.lm.sampler import SamplingParams

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


def chain_rngs(seed: int, owners: list[int]) -> list[np.random.Generator]:
    """One generator per chain, from (seed, its problem's index, its index within the problem)."""
    seen: Counter = Counter()
    out = []
    for k in owners:
        out.append(np.random.default_rng([seed, k, seen[k]]))
        seen[k] += 1
    return out


def grouped_energy(owners: list[Any], energy: Callable[[Any, list], np.ndarray]) -> Callable[[list], np.ndarray]:
    """``energy(states)`` over chains of many problems from ``energy(problem, its states)``."""
    def fn(states: list) -> np.ndarray:
        out = np.empty(len(states))
        for owner in dict.fromkeys(owners):
            idx = [c for c, o in enumerate(owners) if o == owner]
            out[idx] = energy(owner, [states[c] for c in idx])
        return out
    return fn


def run_problem(starts: list, propose: Callable, energy: Callable, tau: float, block: int, steps: int,
                seed: int) -> Chains:
    """The chains of one problem (deterministic for a seed)."""
    return run_chains(starts, propose, energy, tau=tau, block=block, steps=steps,
                      rng=chain_rngs(seed, [0] * len(starts)))


def run_problems(sampler: Any, tokenizer: Any, params: SamplingParams, prompts: list[list[int]],
                 starts: list[list[list[int]]], energy: Callable[[int, list], np.ndarray], ebd: EBDParams,
                 ) -> tuple[list[Chains], bool]:
    """Every problem's chains (problem ``k``: prompt ids ``prompts[k]``, start answers ``starts[k]``,
    ``energy(k, states)``), and whether proposals reused the chains' KV caches.

    The chains of as many problems as fill one sampler batch run together (one forward decodes
    them all: on a CPU a forward costs about as much for 2 rows as for 60); chunks bound the memory
    the chains' caches take. Per-chain seeds and random generators make every chain independent of
    which chains share its batch (``ebd``: :class:`impetus.config.EBDParams`).
    """
    size = max(1, params.batch_size // ebd.chains)
    chunks = [list(range(i, min(i + size, len(prompts)))) for i in range(0, len(prompts), size)]
    bar = None
    if ebd.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=ebd.steps * len(chunks), unit="step",
                   desc=f"EBD: {len(prompts)} problems x {ebd.chains} chains, MH steps")
    out: list[Chains] = []
    reuse = False
    for chunk in chunks:
        owners = [k for k in chunk for _ in starts[k]]
        seeds = [ebd.seed * 7919 + k * 104729 + 1000 * j for k in chunk for j in range(len(starts[k]))]
        propose = Proposer(sampler, tokenizer, params, [prompts[k] for k in owners], seeds)
        every = run_chains(propose.start([a for k in chunk for a in starts[k]]), propose,
                           grouped_energy(owners, energy), ebd.tau, ebd.block, ebd.steps,
                           rng=chain_rngs(ebd.seed, owners), on_step=bar.update if bar is not None else None)
        out += [every.subset([c for c, o in enumerate(owners) if o == k]) for k in chunk]
        reuse = propose.reuse_cache
    if bar is not None:
        bar.close()
    return out, reuse


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
