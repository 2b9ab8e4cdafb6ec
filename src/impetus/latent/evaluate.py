"""V2 against V1 at equal compute (Kedro-free): run the latent optimiser, then compare.

Tokens are the unit of compute: a V2 answer costs the tokens of the candidates it started from
(one sample, or all N for the V1 choice) plus every token the model generated while optimising
(forward-token work of the teacher-forced scoring is reported beside it). A V1 method is matched
at the number of candidates ``n`` whose mean tokens per problem first reach V2's, using each
problem's *first* ``n`` candidates, so V1 and V2 are paired on the same problems and the paired
bootstrap applies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from impetus.latent.optimize import LatentOptimizer
from impetus.lm.sampler import Generation
from impetus.selection.metrics import bootstrap_ci, paired_bootstrap
from impetus.selection.rules import Selector, selection_correct


def _generation(row: Mapping[str, Any], tok: Any, prompt: str) -> Generation:
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
            start_gen = _generation(cand, tok, prompt_of[pid])
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


def prefix_accuracy(df: pd.DataFrame, method: Selector, n: int) -> pd.Series:
    """Per-problem correctness of ``method`` on each problem's first ``n`` candidates."""
    sub = df[df["sample_idx"] < n]
    return selection_correct(sub, method(sub))


def v1_budget_curve(df: pd.DataFrame) -> pd.Series:
    """Mean tokens per problem of the first ``n`` candidates, for n = 1..N."""
    n_max = int(df["sample_idx"].max()) + 1
    return pd.Series({n: float(df[df["sample_idx"] < n].groupby("problem_id")["n_tokens"].sum().mean())
                      for n in range(1, n_max + 1)})


def summarize(
    v2: pd.DataFrame, v1_df: pd.DataFrame, v1_methods: Mapping[str, Selector], compare_to: Sequence[str],
    n_boot: int, seed: int,
) -> dict[str, Any]:
    """``v2_metrics.json``: every V2 method and the V1 methods at N and at V2's token budget."""
    problems = sorted(v2["problem_id"].unique())
    v1_sub = v1_df[v1_df["problem_id"].isin(problems)]
    curve = v1_budget_curve(v1_sub)
    n_max = int(curve.index.max())
    methods: dict[str, dict] = {}
    for name in compare_to:
        c = prefix_accuracy(v1_sub, v1_methods[name], n_max).reindex(problems).to_numpy(float)
        methods[name] = {"accuracy": float(c.mean()), "ci": list(bootstrap_ci(c, n_boot=n_boot, seed=seed)),
                         "tokens_per_problem": float(curve[n_max]), "seconds_per_problem": None, "family": "v1", "n": n_max}
    comparisons = {}
    for name, g in v2.groupby("method", sort=False):
        g = g.set_index("problem_id").reindex(problems)
        c = g["correct"].to_numpy(float)
        tokens = float(g["tokens"].mean())
        methods[name] = {"accuracy": float(c.mean()), "ci": list(bootstrap_ci(c, n_boot=n_boot, seed=seed)),
                         "tokens_per_problem": tokens, "seconds_per_problem": float(g["seconds"].mean()), "family": "v2",
                         "energy_before": float(g["energy_before"].mean()), "energy_after": float(g["energy_after"].mean()),
                         "flips_wrong_to_right": int((~g["start_correct"] & g["correct"]).sum()),
                         "flips_right_to_wrong": int((g["start_correct"] & ~g["correct"]).sum())}
        n = int(next((k for k in curve.index if curve[k] >= tokens), n_max))
        for v1 in compare_to:
            ref = prefix_accuracy(v1_sub, v1_methods[v1], n).reindex(problems).to_numpy(float)
            key = f"{v1}@{n}"
            methods.setdefault(key, {"accuracy": float(ref.mean()), "ci": list(bootstrap_ci(ref, n_boot=n_boot, seed=seed)),
                                     "tokens_per_problem": float(curve[n]), "seconds_per_problem": None, "family": "v1", "n": n})
            pb = paired_bootstrap(c, ref, n_boot=n_boot, seed=seed)
            comparisons[f"{name} vs {key}"] = {"diff": pb["mean_diff"], "ci": [pb["lo"], pb["hi"]], "p_value": pb["p_value"]}
    return {"methods": methods, "n_problems": len(problems), "comparisons": comparisons,
            "v1_tokens_by_n": {int(k): v for k, v in curve.items()}}
