"""V2 against V1 at equal compute (Kedro-free): run the latent optimiser, then compare.

A V2 answer costs the tokens of the candidates it started from (one sample, or all N for the V1
choice) plus every token the model generated while optimising (forward-token work of the
teacher-forced scoring is reported beside it); V1 is matched at that budget by
:func:`impetus.selection.budget.compare_at_equal_tokens`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from impetus.latent.optimize import LatentOptimizer
from impetus.lm.sampler import Generation
from impetus.selection.budget import compare_at_equal_tokens
from impetus.selection.rules import Selector


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


def summarize(
    v2: pd.DataFrame, v1_df: pd.DataFrame, v1_methods: Mapping[str, Selector], compare_to: Sequence[str],
    n_boot: int, seed: int,
) -> dict[str, Any]:
    """``v2_metrics.json``: every V2 method and the V1 methods at N and at V2's token budget."""
    def extra(g: pd.DataFrame) -> dict[str, Any]:
        return {"energy_before": float(g["energy_before"].mean()), "energy_after": float(g["energy_after"].mean()),
                "flips_wrong_to_right": int((~g["start_correct"] & g["correct"]).sum()),
                "flips_right_to_wrong": int((g["start_correct"] & ~g["correct"]).sum())}

    return compare_at_equal_tokens(v2, v1_df, v1_methods, compare_to, "v2", extra, n_boot, seed, at_full_n=True)
