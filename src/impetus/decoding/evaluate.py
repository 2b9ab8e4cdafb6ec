"""EBD against best-of-N and V1 at equal generated tokens (Kedro-free).

Per problem, ``chains`` MH chains run toward ``p_LM^α · exp(−E/τ)`` (:mod:`impetus.decoding.mh`).
Chain ``c`` starts from the lowest-energy of its own ``n_init`` V1 candidates (``c·n_init ..``; the
EBD paper starts from the best of 4 by its reward; any start is allowed, the stationary
distribution does not depend on it) and proposes from the base model at temperature ``1/α``
without truncation; ``kernel: differ`` makes each proposal's first regenerated token differ from
the chain's (:mod:`impetus.decoding.mh`, "Differing proposals"); ``kernel: smc`` runs no chains but
Power-SMC's ``chains · n_init`` particles from the prompt (:mod:`impetus.decoding.smc`, no start
tokens; its answers are the same at every listed step). Two EBD answers per problem: ``ebd_lowest`` (the lowest-energy state any
chain visited) and ``ebd_vote`` (majority over the chains' final states, i.e. over samples of the
tilted distribution). The chains of many problems are proposed in one batch (:func:`run_problems`).
Tokens = the ``chains · n_init`` candidates' tokens + every proposed token; after ``s`` steps the
same accounting gives the accuracy-vs-tokens curve. V1 is matched at that budget by
:func:`impetus.selection.budget.compare_at_equal_tokens`. The settings in ``grid`` (τ, α, block,
steps, n_init, chains, ``kernel``, and ``answer``: which of the two is EBD's answer) are chosen on the dev split by
the accuracy of the answer a point names (``search``:
:func:`impetus.selection.grid.choose_on_dev`), then run once on eval. The listed ``steps`` are read
off one dev run at the largest: a chain's first ``s`` steps draw the same cuts, proposals and
uniforms whatever its length (per-chain generators and seeds), so they *are* an ``s``-step chain.
:func:`evaluate_ebd` does all of it; the model is reached only through
:class:`impetus.lm.sampler.ContinuingSampler`.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import pandas as pd

from impetus.benchmarks.grading import Grade
from impetus.decoding.mh import Chains, run_chains
from impetus.decoding.proposals import Proposer, trace_log_norm, trace_token_logq
from impetus.decoding.smc import run_smc_problems
from impetus.lm.runner import stable_seed
from impetus.lm.sampler import ContinuingSampler, SamplingParams, row_seed
from impetus.lm.trace import Trace
from impetus.selection.budget import (V1Reference, compare_at_equal_tokens, prefix_accuracy, v1_budget_curve,
                                      v1_seconds)
from impetus.selection.grid import Search, choose_on_dev, read_off_one_run, run_key
from impetus.selection.point_cache import PointCache, frame_from_json, frame_to_json
from impetus.selection.rules import majority_index

#: ``score(problem_id, traces) -> energies table`` (one row per trace, a column per energy).
ScoreTraces = Callable[[str, list[Trace]], pd.DataFrame]
#: ``score_many(problem_ids, traces) -> energies table``: ``problem_ids[i]`` is trace ``i``'s problem.
ScoreMany = Callable[[list[str], list[Trace]], pd.DataFrame]


@dataclass(frozen=True)
class EBDConfig:
    """How to run and judge EBD (values from ``parameters_ebd.yml``; see its descriptions)."""

    n_problems: int | None
    energy: str
    tau: float
    alpha: float
    block: int
    chains: int
    n_init: int
    steps: int
    answer: Literal["lowest", "vote"]
    kernel: Literal["resample", "differ", "smc"]
    grid: Mapping[str, Sequence[Any]]
    search: Search
    dev_problems: int | None
    n_boot: int
    seed: int
    progress: bool

    def settings(self) -> dict[str, Any]:
        """The values a dev grid can choose."""
        return {k: getattr(self, k) for k in ("tau", "alpha", "block", "chains", "n_init", "steps", "answer", "kernel")}


@dataclass(frozen=True)
class EBDSplit:
    """One split's problems for EBD: prompts (problem_id, prompt), graded candidates with the energy
    column (chain starts are chosen by it), how chain states are scored and graded."""

    prompts: pd.DataFrame
    candidates: pd.DataFrame
    score: "ScoreTraces"
    grade: Grade
    score_many: "ScoreMany | None" = None  # the states of many problems in one call (one batch per energy)


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


def split_energy(split: EBDSplit, pids: list[str], name: str) -> Callable[[list[int], list], np.ndarray]:
    """``energy(problem indices, states)`` of a split's ``pids``: one scoring call for the states of
    every problem in a batch when the split can (``score_many``: one MiniLM and one EBM batch instead
    of one per problem), else problem by problem."""
    if split.score_many is not None:
        return lambda ks, states: split.score_many([pids[k] for k in ks], states)[name].to_numpy(float)
    return lambda ks, states: grouped_energy(ks, lambda k, s: split.score(pids[k], s)[name].to_numpy(float))(states)


def _owned_energy(energy: Callable[[list[int], list], np.ndarray], owners: list[int], chains: list[int],
                  states: list) -> np.ndarray:
    """``run_chains``' energy over a batch of many problems' chains: ``owners[c]`` is chain ``c``'s problem."""
    return energy([owners[c] for c in chains], states)


def run_problem(starts: list, propose: Callable, energy: Callable, tau: float, block: int, steps: int,
                seed: int) -> Chains:
    """The chains of one problem (deterministic for a seed); ``energy(states)`` scores its states."""
    return run_chains(starts, propose, lambda _chains, states: energy(states), tau=tau, block=block, steps=steps,
                      rng=chain_rngs(seed, [0] * len(starts)))


def run_problems(sampler: ContinuingSampler, tokenizer: Any, params: SamplingParams, prompts: list[list[int]],
                 starts: list[list[list[int]]], energy: Callable[[list[int], list], np.ndarray], ebd: EBDConfig,
                 keys: list[Any] | None = None) -> tuple[list[Chains], bool]:
    """Every problem's chains (problem ``k``: prompt ids ``prompts[k]``, start answers ``starts[k]``,
    seeds from ``keys[k]``, default ``k``: its problem id), and whether proposals reused the chains'
    KV caches. ``energy(owners, states)``: the energies of a batch's states, ``owners[i]`` the
    problem index of state ``i`` (:func:`split_energy`).

    The chains of as many problems as fill one sampler batch run together (one forward decodes
    them all: on a CPU a forward costs about as much for 2 rows as for 60); chunks bound the memory
    the chains' caches take. Per-chain seeds (``row_seed(stable_seed(seed, key), chain)``, as the
    sampler seeds a problem's rows) and random generators make every chain independent of which
    chains share its batch. Proposals sample at temperature ``params.temperature`` (``1/ebd.alpha``),
    toward the power target when ``ebd.alpha`` > 1.
    """
    keys = list(range(len(prompts))) if keys is None else keys
    log_norm = None if ebd.alpha == 1 else partial(trace_log_norm, alpha=ebd.alpha, cap=params.max_new_tokens)
    token_logq = partial(trace_token_logq, temperature=params.temperature) if ebd.kernel == "differ" else None
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
        scored = partial(_owned_energy, energy, owners)
        every = run_chains(propose.start([a for k in chunk for a in starts[k]]), propose, scored, ebd.tau,
                           ebd.block, ebd.steps, rng=chain_rngs(ebd.seed, owners),
                           on_step=bar.update if bar is not None else None, log_norm=log_norm, token_logq=token_logq)
        out += [every.subset([c for c, o in enumerate(owners) if o == k]) for k in chunk]
        reuse = propose.reuse_cache
    if bar is not None:
        bar.close()
    return out, reuse


def mh_stats(rows: pd.DataFrame) -> dict[str, Any]:
    """MH acceptance (mean per problem), the share of proposals that differ from the chain's answer,
    and the acceptance of those (pooled; None without any): :meth:`Chains.move_counts`."""
    proposals, moves, rejections = (int(rows[c].sum()) for c in ("proposals", "moves", "rejections"))
    changed = moves + rejections
    acceptance = rows["acceptance"].mean()
    smc = ({"smc_resamples": float(rows["resamples"].mean()), "smc_final_ess": float(rows["final_ess"].mean())}
           if "resamples" in rows else {})  # Power-SMC has no MH moves: how often it resampled instead
    return {"acceptance": None if pd.isna(acceptance) else float(acceptance),
            "changed_proposals": changed / proposals if proposals else None,
            "acceptance_of_changes": moves / changed if changed else None} | smc


def summarize(
    rows: pd.DataFrame, curve_rows: pd.DataFrame, v1: V1Reference, compare_to: list[str], n_boot: int, seed: int,
) -> dict[str, Any]:
    """``ebd_metrics.json``: EBD methods, V1 methods at EBD's token budget, and the curves."""
    result = compare_at_equal_tokens(rows, v1, compare_to, "ebd", mh_stats, n_boot, seed)
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


def answer_rows(pids: list[str], chains_of: list[Chains], base_tokens_of: Mapping[str, int], steps: int,
                decode: Callable[[list[int]], str], grade: Grade, seconds: float, stepless: bool = False
                ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(answers, curve, per_step)``: both EBD answers per problem with their tokens; accuracy and
    mean tokens per problem after each MH step (the starts' tokens + the proposals' so far); and the
    same per problem (what the compute-matched choice pairs problem by problem). ``stepless``
    (Power-SMC, which has no MH steps): every step's row is the final answer at its full tokens, so
    a grid listing steps reads the same run whatever the kernel."""
    out, curve = [], []
    for pid, chains in zip(pids, chains_of):
        base_tokens = int(base_tokens_of[pid])
        final = chain_answers(chains, decode, pid, grade)
        for name, (answer, ok, text) in final.items():
            out.append({"problem_id": pid, "method": name, "answer": answer, "correct": ok, "text": text,
                        "tokens": base_tokens + chains.proposed_tokens, "seconds": seconds,
                        "acceptance": chains.acceptance_rate(),
                        **dict(zip(("proposals", "moves", "rejections"), chains.move_counts()))})
        per_step = chains.proposed_tokens / max(steps, 1)
        for s in range(steps + 1):
            for name, (_, ok, _) in (final if stepless else chain_answers(chains, decode, pid, grade, step=s)).items():
                curve.append({"problem_id": pid, "method": name, "step": s, "correct": ok,
                              "tokens": base_tokens + (chains.proposed_tokens if stepless else per_step * s)})
    per_step = pd.DataFrame(curve)
    curve_df = (per_step.groupby(["method", "step"], as_index=False)
                .agg(accuracy=("correct", "mean"), tokens_per_problem=("tokens", "mean")))
    return pd.DataFrame(out), curve_df, per_step


def chain_starts(candidates: pd.DataFrame, energy: str, chains: int, n_init: int) -> tuple[list[int], int]:
    """One problem's chain starts (sample_idx): chain ``c`` takes the lowest-``energy`` of candidates
    ``c·n_init .. (c+1)·n_init − 1``; and the tokens of all of them (what the starts cost)."""
    g = candidates.sort_values("sample_idx")
    if len(g) < chains * n_init:
        raise ValueError(f"EBD needs chains x n_init = {chains} x {n_init} candidates per problem, "
                         f"problem {g['problem_id'].iloc[0]!r} has {len(g)} (sampling.n; sampling.adaptive must be off)")
    g = g.head(chains * n_init)
    e = g[energy].to_numpy(float)
    starts = [int(g["sample_idx"].iloc[c * n_init + int(np.argmin(e[c * n_init: (c + 1) * n_init]))])
              for c in range(chains)]
    return starts, int(g["n_tokens"].sum())


def decode_split(sampler: ContinuingSampler, tokenizer: Any, params: SamplingParams, split: EBDSplit,
                 pids: list[str], cfg: EBDConfig) -> tuple[pd.DataFrame, pd.DataFrame, bool, pd.DataFrame]:
    """``(answers, curve, reuse_cache, per_step)`` of EBD on ``pids`` of one split with ``cfg``'s
    settings (:func:`answer_rows`). ``kernel: smc`` runs Power-SMC from the prompts, with no V1
    starts (so no start tokens), and its answers also carry each problem's resampling count and
    final tilted ESS."""
    params = dataclasses.replace(params, n=1, temperature=1.0 / cfg.alpha, top_p=1.0)
    prompt_of = dict(zip(split.prompts["problem_id"], split.prompts["prompt"]))
    prompts = [tokenizer(prompt_of[pid])["input_ids"] for pid in pids]
    energy = split_energy(split, pids, cfg.energy)
    smc = cfg.kernel == "smc"
    starts, base_tokens = ([], dict.fromkeys(pids, 0)) if smc else _mh_starts(tokenizer, split, pids, cfg)
    t0 = time.perf_counter()
    if smc:
        chains_of, stats, reuse_cache = run_smc_problems(
            sampler, tokenizer, params, prompts, energy, particles=cfg.chains * cfg.n_init, block=cfg.block,
            alpha=cfg.alpha, tau=cfg.tau, seed=cfg.seed, keys=pids, progress=cfg.progress)
    else:
        chains_of, reuse_cache = run_problems(sampler, tokenizer, params, prompts, starts, energy, cfg, keys=pids)
    seconds = (time.perf_counter() - t0) / max(len(pids), 1)
    answers, curve, per_step = answer_rows(pids, chains_of, base_tokens, cfg.steps,
                                           lambda ids: tokenizer.decode(ids, skip_special_tokens=False), split.grade,
                                           seconds, stepless=smc)
    if smc:
        answers = answers.merge(pd.DataFrame({"problem_id": pids, "resamples": [st.resamples for st in stats],
                                              "final_ess": [st.final_ess for st in stats]}), on="problem_id")
    return answers, curve, reuse_cache, per_step


def _mh_starts(tokenizer: Any, split: EBDSplit, pids: list[str], cfg: EBDConfig
               ) -> tuple[list[list[list[int]]], dict[str, int]]:
    """Each problem's chain starts (token ids, :func:`chain_starts`) and the tokens they cost."""
    by_pid = {pid: g for pid, g in split.candidates.groupby("problem_id")}
    picked = {pid: chain_starts(by_pid[pid], cfg.energy, cfg.chains, cfg.n_init) for pid in pids}
    text_of = split.candidates.set_index(["problem_id", "sample_idx"])["completion"]
    starts = [[tokenizer(text_of[(pid, i)], add_special_tokens=False)["input_ids"] for i in picked[pid][0]]
              for pid in pids]
    return starts, {pid: t for pid, (_, t) in picked.items()}


def _dev_run(point: Mapping[str, Any]) -> str:
    """Which dev run scored a grid point: its settings but ``steps`` (read off the longest run) and
    ``answer`` (both answers come from the same chains)."""
    return run_key({k: v for k, v in point.items() if k != "answer"}, "steps")


_NOT_IN_A_DEV_RUN = ("n_problems", "n_boot", "progress")


def _dev_run_value(sampler: ContinuingSampler, tokenizer: Any, params: SamplingParams, dev: EBDSplit,
                   pids: list[str], cfg: EBDConfig) -> dict[str, Any]:
    """What the dev grid reads off one dev run (:func:`decode_split`), as a stored point."""
    answers, curve, _, per_step = decode_split(sampler, tokenizer, params, dev, pids, cfg)
    return {"curve": frame_to_json(curve), "per_step": frame_to_json(per_step),
            "accepted": mh_stats(answers[answers["method"] == "ebd_lowest"])}


def evaluate_ebd(
    sampler: ContinuingSampler, tokenizer: Any, params: SamplingParams, eval_split: EBDSplit, v1: V1Reference,
    cfg: EBDConfig, dev: EBDSplit | None = None, dev_runs: PointCache | None = None,
) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """EBD on the first ``cfg.n_problems`` eval problems, settings chosen on ``dev`` when
    ``cfg.grid`` lists any; returns ``(ebd_metrics, answers, per_step)``: ``per_step`` holds each
    problem's correctness and tokens after each MH step of both answers, ``split`` eval and, when a
    grid ran, dev (the chosen setting's dev run, to its largest listed steps).

    ``params`` are the sampler's for the stage; proposals override them to one row at temperature
    ``1/α`` without truncation, the model's own (tempered) conditional (:mod:`impetus.decoding.mh`).
    ``dev_runs`` keeps each finished dev run (its curve, per-problem rows and MH statistics), so a
    rerun after a crash decodes only the runs it lacks; its key must cover the sampler, the dev
    split's tables and the energies' models (the node's does)."""
    tables: list[dict] = []
    dev_runs = dev_runs or PointCache(None, "")
    if cfg.grid:
        if dev is None:
            raise ValueError("ebd.grid lists settings to choose but no dev split was given")
        dev_pids = list(dev.prompts["problem_id"])[: cfg.dev_problems or None]

        accepted: dict[str, dict] = {}  # MH statistics of each dev run (all its steps), by its other settings
        runs: dict[str, pd.DataFrame] = {}  # each dev run's curve, by its settings but steps and answer
        dev_steps: dict[str, pd.DataFrame] = {}  # and its per-problem rows

        def dev_accuracy(point: dict[str, Any], steps: list[int]) -> dict[int, float]:
            """The chosen answer's (``ebd_<answer>``) dev accuracy after each of ``steps`` MH steps of
            one run; both answers come from the same chains, so a run serves both."""
            key = _dev_run(point)
            if key not in runs:
                run_cfg = dataclasses.replace(cfg, **{k: v for k, v in point.items() if k != "answer"})
                # Keyed by every setting a dev run reads (not eval's problem count, the bootstrap or the bar).
                setting = {k: v for k, v in dataclasses.asdict(run_cfg).items() if k not in _NOT_IN_A_DEV_RUN}
                stored = dev_runs.get(
                    {"dev_run": setting, "problems": dev_pids},
                    lambda: _dev_run_value(sampler, tokenizer, params, dev, dev_pids, run_cfg))
                runs[key], dev_steps[key] = frame_from_json(stored["curve"]), frame_from_json(stored["per_step"])
                accepted[key] = stored["accepted"]
            method = f"ebd_{point.get('answer', cfg.answer)}"
            acc = runs[key][runs[key]["method"] == method].set_index("step")["accuracy"]
            return {s: float(acc.loc[s]) for s in steps}

        chosen, tables = choose_on_dev(cfg.grid, read_off_one_run(cfg.grid, "steps", cfg.steps, dev_accuracy),
                                       cfg.search)
        for row in tables:  # how far each setting is from the acceptance it is meant to have, on dev
            row |= {f"dev_{k}": v for k, v in accepted[_dev_run(row["settings"])].items()}
        cfg = dataclasses.replace(cfg, **chosen)
        chosen_dev = dev_steps[_dev_run(chosen)]
    pids = list(eval_split.prompts["problem_id"])[: cfg.n_problems or None]
    answers, curve, reuse_cache, per_step = decode_split(sampler, tokenizer, params, eval_split, pids, cfg)
    per_step = pd.concat([per_step.assign(split="eval")]
                         + ([chosen_dev.assign(split="dev")] if cfg.grid else []), ignore_index=True)
    compare_to = v1.resolve([cfg.energy, "majority", f"vote_{cfg.energy}", "headline"])
    result = summarize(answers, curve, v1, compare_to, cfg.n_boot, cfg.seed)
    sampling = v1_seconds(v1.table[v1.table["problem_id"].isin(pids)], cfg.chains * cfg.n_init)
    seconds = result["methods"][f"ebd_{cfg.answer}"]["seconds_per_problem"]
    result |= {"energy": cfg.energy, **cfg.settings(), "chosen_method": f"ebd_{cfg.answer}",
               # seconds per problem over plain sampling of chains x n_init candidates (SMC's particles)
               "sampling_seconds_per_problem": sampling, "latency_vs_sampling": seconds / sampling if sampling else None,
               "headline_v1": v1.headline, "reuse_cache": reuse_cache,
               "chosen_on": "dev" if cfg.grid else "config", "settings": cfg.settings(), "grid": dict(cfg.grid),
               "search": cfg.search, "grid_dev_accuracy": tables, "dev_problems": cfg.dev_problems}
    return result, answers, per_step
