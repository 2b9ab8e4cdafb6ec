"""V2 against V1 at equal compute (Kedro-free): run the latent optimiser, then compare.

A V2 answer costs the tokens of the candidates it started from (one sample, or all N for the V1
choice) plus every token the model generated while optimising (forward-token work of the
teacher-forced scoring is reported beside it); V1 is matched at that budget by
:func:`impetus.selection.budget.compare_at_equal_tokens`. :func:`evaluate_v2` does all of it; the
model is reached only through :class:`impetus.lm.sampler.LatentSampler`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from impetus.benchmarks.grading import Grade
from impetus.latent.optimize import LatentConfig, LatentOptimizer, StateEnergy
from impetus.lm.sampler import Generation, LatentSampler, SamplingParams
from impetus.selection.budget import V1Reference, compare_at_equal_tokens

#: ``score(problem_id, generations) -> energies table`` (one row per generation, a column per energy).
ScoreAnswers = Callable[[str, "list[Generation]"], pd.DataFrame]


@dataclass(frozen=True)
class V2Config:
    """How to run and judge V2 (values from ``parameters_v2_latent.yml``; see its descriptions)."""

    n_problems: int | None
    energy: str
    starts: tuple[Literal["single", "v1"], ...]
    modes: tuple[Literal["reinforce", "gradient"], ...]
    prefix_fraction: float
    min_prefix: int
    steps: int
    lr: float
    samples: int
    radius: float
    stop_energy: float | None
    compare_to: tuple[str, ...]
    n_boot: int
    seed: int
    progress: bool

    def optimizer(self, mode: Literal["reinforce", "gradient"]) -> LatentConfig:
        """The optimiser's settings for one update mode."""
        # V2Config carries every LatentConfig field but the mode (one optimiser per listed mode)
        shared = {f.name: getattr(self, f.name) for f in fields(LatentConfig) if f.name != "mode"}
        return LatentConfig(mode=mode, **shared)


def pool_fn(source: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Pooled LatentEBM input from answer states (z in place of the first ones), as in V1; the
    answer state is the last token's (the V1 fallback), since V2 may move the answer."""
    def pool(states: torch.Tensor) -> torch.Tensor:
        mean, last = states.mean(dim=0), states[-1]
        return {"mean": mean, "answer": last, "both": torch.cat([mean, last])}[source]
    return pool


def _generation(row: Mapping[str, Any], tok: Any) -> Generation:
    ids = tok(row["completion"], add_special_tokens=False)["input_ids"]
    return Generation(text=row["completion"], token_ids=ids, n_tokens=len(ids), finish_reason=row["finish_reason"],
                      logprob_mean=float("nan"), seconds=0.0)


def optimize_problems(
    optimizers: Mapping[str, tuple[LatentOptimizer, dict]], starts: Mapping[str, pd.Series], graded: pd.DataFrame,
    prompts: pd.DataFrame, tok: Any, energy_of: Callable[[str, list[Generation]], np.ndarray],
    grade: Callable[[str, str], tuple[str | None, bool]], seed: int, progress: Callable[[Any], Any] = iter,
) -> pd.DataFrame:
    """One row per (problem, method): method = ``<mode>_<start>``; ``starts[start]`` maps problem ->
    chosen sample_idx; ``optimizers[mode] = (optimizer, extra kwargs of optimize)``."""
    prompt_of = dict(zip(prompts["problem_id"], prompts["prompt"]))
    by_key = graded.set_index(["problem_id", "sample_idx"])
    tokens_per_problem = graded.groupby("problem_id")["n_tokens"].sum()
    rows = []
    for pid in progress(list(starts[next(iter(starts))].index)):
        prompt_ids = tok(prompt_of[pid])["input_ids"]
        for start, chosen in starts.items():
            cand = by_key.loc[(pid, int(chosen[pid]))]
            start_gen = _generation(cand, tok)
            base_tokens = int(cand["n_tokens"]) if start == "single" else int(tokens_per_problem[pid])
            for mode, (opt, extra) in optimizers.items():
                res = opt.optimize(prompt_ids, start_gen, lambda gens, p=pid: energy_of(p, gens), seed=seed, **extra)
                answer, correct = grade(pid, res.text)
                rows.append({
                    "problem_id": pid, "method": f"v2_{mode}_{start}", "text": res.text, "answer": answer,
                    "correct": correct, "start_correct": bool(cand["correct"]), "energy_before": res.start_energy,
                    "energy_after": res.energy, "prefix_changed": res.prefix_changed,
                    "tokens": base_tokens + res.generated_tokens, "seconds": res.seconds, "start_text": cand["completion"],
                    "trace": res.steps,
                })
    return pd.DataFrame(rows)


def summarize(v2: pd.DataFrame, v1: V1Reference, compare_to: Sequence[str], n_boot: int, seed: int) -> dict[str, Any]:
    """``v2_metrics.json``: every V2 method and the V1 methods at N and at V2's token budget."""
    def extra(g: pd.DataFrame) -> dict[str, Any]:
        return {"energy_before": float(g["energy_before"].mean()), "energy_after": float(g["energy_after"].mean()),
                "flips_wrong_to_right": int((~g["start_correct"] & g["correct"]).sum()),
                "flips_right_to_wrong": int((g["start_correct"] & ~g["correct"]).sum())}

    return compare_at_equal_tokens(v2, v1, compare_to, "v2", extra, n_boot, seed, at_full_n=True)


def evaluate_v2(
    sampler: LatentSampler, tokenizer: Any, params: SamplingParams, prompts: pd.DataFrame, candidates: pd.DataFrame,
    selections: pd.DataFrame, score: ScoreAnswers, grade: Grade, v1: V1Reference, cfg: V2Config,
    state_energy: StateEnergy | None = None, hidden_source: str = "both",
) -> tuple[dict[str, Any], pd.DataFrame]:
    """V2 on the first ``cfg.n_problems`` problems of ``prompts`` from each start (``single``: the
    first candidate; ``v1``: the V1 headline's choice in ``selections``) and mode, answers scored
    by ``score`` (column ``cfg.energy``); returns ``(v2_metrics, one row per problem and method)``.

    ``state_energy`` (the LatentEBM over pooled states from ``hidden_source``) drives the gradient
    mode. Regeneration is greedy and seeded, so a seed gives the same answers."""
    optimizers = {}
    for mode in cfg.modes:
        extra = {} if mode == "reinforce" else {"state_energy": state_energy, "pool": pool_fn(hidden_source)}
        optimizers[mode] = (LatentOptimizer(sampler, tokenizer, params, cfg.optimizer(mode)), extra)
    sel = selections.set_index("problem_id")
    pids = list(prompts["problem_id"])[: cfg.n_problems or None]
    starts = {s: sel.loc[pids, "first" if s == "single" else v1.headline] for s in cfg.starts}
    progress: Callable[[Any], Any] = iter
    if cfg.progress:
        from tqdm.auto import tqdm

        progress = lambda xs: tqdm(xs, desc="V2 latent optimisation", unit="problem")  # noqa: E731
    with torch.random.fork_rng(devices=[]):  # the run's torch draws do not move the caller's state
        torch.manual_seed(cfg.seed)
        v2 = optimize_problems(optimizers, starts, candidates, prompts, tokenizer,
                               lambda pid, gens: score(pid, gens)[cfg.energy].to_numpy(dtype=float), grade, cfg.seed,
                               progress)
    result = summarize(v2, v1, v1.resolve(cfg.compare_to), cfg.n_boot, cfg.seed)
    return result | {"energy": cfg.energy, "headline_v1": v1.headline}, v2
