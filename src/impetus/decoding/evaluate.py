"""EBD against best-of-N and V1 at equal generated tokens (Kedro-free).

Per problem, ``chains`` MH chains start from the problem's first ``chains`` V1 candidates (any start
is allowed: the stationary distribution does not depend on it) and propose from the base model at
temperature 1 without truncation, as the derivation in :mod:`impetus.decoding.mh` requires. Two
EBD answers per problem: ``ebd_lowest`` (the lowest-energy state any chain visited) and
``ebd_vote`` (majority over the chains' final states, i.e. over samples of the tilted
distribution). The chains of many problems are proposed in one batch (:func:`run_problems`).
Tokens = the starts' tokens + every proposed token; after ``s`` steps the same
accounting gives the accuracy-vs-tokens curve. V1 is matched at that budget by
:func:`impetus.selection.budget.compare_at_equal_tokens`. :func:`evaluate_ebd` does all of it;
the model is reached only through :class:`impetus.lm.sampler.ContinuingSampler`.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from impetus.benchmarks.grading import Grade
from impetus.decoding.mh import Chains, run_chains
from impetus.decoding.proposals import Proposer
from impetus.lm.runner import stable_seed
from impetus.lm.sampler import ContinuingSampler, SamplingParams, row_seed
from impetus.lm.trace import Trace
from impetus.selection.budget import V1Reference, compare_at_equal_tokens, prefix_accuracy, v1_budget_curve
from impetus.selection.rules import majority_index

#: ``score(problem_id, traces) -> energies table`` (one row per trace, a column per energy).
ScoreTraces = Callable[[str, "list[Trace]"], pd.DataFrame]


@dataclass(frozen=True)
class EBDConfig:
    """How to run and judge EBD (values from ``parameters_ebd.yml``; see its descriptions)."""

    n_problems: int | None
    energy: str
    tau: float
    block: int
    chains: int
    steps: int
    n_boot: int
    seed: int
    progress: bool


def chain_answers(chains: Chains, decode: Callable[[list[int]], str], pid: str, grade: Grade,
                  step: int | None = None) -> dict[str, Any]:
    """The two EBD answers of one problem from its chains (truncated at ``step`` if given)."""
    states = [s if step is None else s[: step + 1] for s in chains.states]
    energies = [e if step is None else e[: step + 1] for e in chains.energies]
    flat = [(e, y) for es, ys in zip(energies, states) for e, y in zip(es, ys)]
    lowest = min(flat, key=lambda t: t[0])[1]
    low_answer, low_ok = grade(pid, decode(lowest))
    finals = [grade(pid, decode(s[-1])) for s in states]
    vote, vote_ok = finals[majority_index([a for a, _ in finals])]
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


def run_problems(sampler: ContinuingSampler, tokenizer: Any, params: SamplingParams, prompts: list[list[int]],
                 starts: list[list[list[int]]], energy: Callable[[int, list], np.ndarray], ebd: EBDConfig,
                 keys: list[Any] | None = None) -> tuple[list[Chains], bool]:
    """Every problem's chains (problem ``k``: prompt ids ``prompts[k]``, start answers ``starts[k]``,
    ``energy(k, states)``, seeds from ``keys[k]``, default ``k``: its problem id), and whether
    proposals reused the chains' KV caches.

    The chains of as many problems as fill one sampler batch run together (one forward decodes
    them all: on a CPU a forward costs about as much for 2 rows as for 60); chunks bound the memory
    the chains' caches take. Per-chain seeds (``row_seed(stable_seed(seed, key), chain)``, as the
    sampler seeds a problem's rows) and random generators make every chain independent of which
    chains share its batch.
    """
    keys = list(range(len(prompts))) if keys is None else keys
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
        seeds = [row_seed(stable_seed(ebd.seed, keys[k]), j) for k in chunk for j in range(len(starts[k]))]
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
    rows: pd.DataFrame, curve_rows: pd.DataFrame, v1: V1Reference, compare_to: list[str], n_boot: int, seed: int,
) -> dict[str, Any]:
    """``ebd_metrics.json``: EBD methods, V1 methods at EBD's token budget, and the curves."""
    result = compare_at_equal_tokens(rows, v1, compare_to, "ebd",
                                     lambda g: {"acceptance_rate": float(g["acceptance_rate"].mean())}, n_boot, seed)
    problems = sorted(rows["problem_id"].unique())
    v1_sub, v1_methods = v1.table[v1.table["problem_id"].isin(problems)], v1.methods
    curve = v1_budget_curve(v1_sub)
    result["v1_curves"] = {
        v1: [{"n": int(n), "tokens_per_problem": float(curve[n]),
              "accuracy": float(prefix_accuracy(v1_sub, v1_methods[v1], int(n)).mean())} for n in curve.index]
        for v1 in compare_to
    }
    result["ebd_curve"] = curve_rows.to_dict(orient="list")
    return result


def answer_rows(pids: list[str], chains_of: list[Chains], candidates: dict[str, pd.DataFrame], steps: int,
                decode: Callable[[list[int]], str], grade: Grade, seconds: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(answers, curve)``: both EBD answers per problem with their tokens, and accuracy and mean
    tokens per problem after each MH step (the starts' tokens + the proposals' so far)."""
    out, curve = [], []
    for pid, chains in zip(pids, chains_of):
        base_tokens = int(candidates[pid]["n_tokens"].sum())
        for name, (answer, ok, text) in chain_answers(chains, decode, pid, grade).items():
            out.append({"problem_id": pid, "method": name, "answer": answer, "correct": ok, "text": text,
                        "tokens": base_tokens + chains.proposed_tokens, "seconds": seconds,
                        "acceptance_rate": chains.acceptance_rate()})
        per_step = chains.proposed_tokens / max(steps, 1)
        for s in range(steps + 1):
            for name, (_, ok, _) in chain_answers(chains, decode, pid, grade, step=s).items():
                curve.append({"problem_id": pid, "method": name, "step": s, "correct": ok,
                              "tokens": base_tokens + per_step * s})
    curve_df = (pd.DataFrame(curve).groupby(["method", "step"], as_index=False)
                .agg(accuracy=("correct", "mean"), tokens_per_problem=("tokens", "mean")))
    return pd.DataFrame(out), curve_df


def evaluate_ebd(
    sampler: ContinuingSampler, tokenizer: Any, params: SamplingParams, prompts: pd.DataFrame,
    candidates: pd.DataFrame, score: ScoreTraces, grade: Grade, v1: V1Reference, cfg: EBDConfig,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """EBD on the first ``cfg.n_problems`` problems of ``prompts`` (problem_id, prompt), chains
    started from each problem's first ``cfg.chains`` ``candidates`` (graded V1 candidates), states
    scored by ``score`` (column ``cfg.energy``); returns ``(ebd_metrics, answers)``.

    ``params`` are the sampler's for the stage; proposals override them to one row at temperature
    1 without truncation, the model's own conditional (:mod:`impetus.decoding.mh`)."""
    params = dataclasses.replace(params, n=1, temperature=1.0, top_p=1.0)
    prompt_of = dict(zip(prompts["problem_id"], prompts["prompt"]))
    pids = list(prompts["problem_id"])[: cfg.n_problems or None]
    t0 = time.perf_counter()
    cands = {pid: g.sort_values("sample_idx").head(cfg.chains) for pid, g in candidates.groupby("problem_id")}
    chains_of, reuse_cache = run_problems(
        sampler, tokenizer, params, [tokenizer(prompt_of[pid])["input_ids"] for pid in pids],
        [[tokenizer(t, add_special_tokens=False)["input_ids"] for t in cands[pid]["completion"]] for pid in pids],
        lambda k, traces: score(pids[k], traces)[cfg.energy].to_numpy(float), cfg, keys=pids)
    seconds = (time.perf_counter() - t0) / max(len(pids), 1)
    answers, curve = answer_rows(pids, chains_of, cands, cfg.steps,
                                 lambda ids: tokenizer.decode(ids, skip_special_tokens=False), grade, seconds)
    compare_to = v1.resolve([cfg.energy, "majority", f"vote_{cfg.energy}", "headline"])
    result = summarize(answers, curve, v1, compare_to, cfg.n_boot, cfg.seed)
    result |= {"energy": cfg.energy, "tau": cfg.tau, "block": cfg.block, "steps": cfg.steps, "chains": cfg.chains,
               "headline_v1": v1.headline, "reuse_cache": reuse_cache}
    return result, answers
