"""Replication across data seeds: does the chosen method's gain hold when the problems change?

Pure functions over the ``rerank_metrics.json`` dicts of several V1 runs, one per generator/split
seed (``make replicate``). Kedro-free, so a notebook can aggregate any set of runs.

Across seeds the mean gain gets a Student t interval, ``mean ± t_{1-α/2, k-1} · sd / √k`` over
the k per-seed gains (Student 1908; e.g. Wasserman, "All of Statistics", 2004, §10): with k = 3–5
seeds a bootstrap over seeds has only a handful of distinct resamples (10 for k = 3) and its
percentile interval is far too narrow. The interval treats the seeds as draws of the data
(problems and split); each seed's own bootstrap CI (over its eval problems) is shown beside it.
It says how much the gain moves with the data, not how sure each seed is: a seed's sampling noise
is inside its gain, so it is counted once, not twice.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Not selection methods: the first sample, plain majority and pass@N (as in selection.report).
BASELINES = ("first", "majority", "oracle")
#: The issue-15 bar: the chosen method gains this much over one sample in every seed.
DEFAULT_MIN_GAIN = 0.10


def post_hoc_best(metrics: Mapping[str, Any]) -> str:
    """The non-baseline method with the best eval accuracy (ties: the first name in sort order).

    Post hoc: picked on the eval split it is measured on, so it is biased upwards; shown only to
    contrast with the method chosen before eval was looked at.
    """
    methods = metrics["methods"]
    names = sorted(n for n in methods if n not in BASELINES)
    return max(names, key=lambda n: (methods[n]["accuracy"], -names.index(n)))


def seed_summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """One seed's chosen method with its eval accuracy and gains (with CIs), and the post-hoc best.

    The gains are read from ``methods[<chosen>]`` (paired bootstraps over eval problems, see
    :func:`impetus.selection.metrics.evaluate_methods`), so this works whatever else the headline
    block holds.
    """
    headline = metrics["headline"]
    if metrics.get("candidates") == "choices":
        return _choice_seed_summary(metrics)
    chosen = headline["method"]
    m = metrics["methods"][chosen]
    best = post_hoc_best(metrics)
    return {
        "method": chosen,
        "selected_on": headline.get("selected_on"),
        "accuracy": m["accuracy"],
        "ci": list(m["ci"]),
        "gain_vs_single": m["gain_vs_single"],
        "gain_vs_single_ci": list(m["gain_vs_single_ci"]),
        "gain_vs_majority": m["gain_vs_majority"],
        "gain_vs_majority_ci": list(m["gain_vs_majority_ci"]),
        "single": metrics.get("single"),
        "majority": metrics.get("majority"),
        "oracle": metrics.get("oracle"),
        "n_problems": metrics.get("n_problems"),
        "n_candidates": metrics.get("n_candidates"),
        "post_hoc_best": best,
        "post_hoc_best_accuracy": metrics["methods"][best]["accuracy"],
        "post_hoc_best_gain_vs_single": metrics["methods"][best]["gain_vs_single"],
        "cost_ratio_vs_sampling": m.get("cost_ratio_vs_sampling"),
    }


def _choice_seed_summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`seed_summary` of a run on scored choices (:mod:`impetus.selection.choices`): the row's
    reference is the lm-eval baseline chosen on train-side problems (``gain_vs_single`` is the gain over
    it, ``single`` its accuracy, ``reference`` its name); a vote has no meaning there, so the
    majority fields are empty."""
    methods, h = metrics["methods"], metrics["headline"]
    m = methods[h["method"]]
    best = max(sorted(n for n in methods if n != "oracle"), key=lambda n: methods[n]["accuracy"])
    nan = [math.nan, math.nan]
    return {
        "method": h["method"], "selected_on": h.get("selected_on"), "accuracy": m["accuracy"], "ci": list(m["ci"]),
        "gain_vs_single": m["gain_vs_baseline"], "gain_vs_single_ci": list(m["gain_vs_baseline_ci"]),
        "gain_vs_majority": math.nan, "gain_vs_majority_ci": nan, "single": methods[metrics["baseline"]]["accuracy"],
        "majority": None, "oracle": metrics.get("oracle"), "n_problems": metrics.get("n_problems"),
        "n_candidates": metrics.get("n_candidates"), "post_hoc_best": best,
        "post_hoc_best_accuracy": methods[best]["accuracy"], "post_hoc_best_gain_vs_single": methods[best]["gain_vs_baseline"],
        "cost_ratio_vs_sampling": m.get("cost_ratio_vs_sampling"), "reference": metrics["baseline"],
        **{b: acc for b, acc in metrics["baselines"].items()},
        "latent_states": (metrics.get("latent_features") or {}).get("source"),  # what the LatentEBM read
    }


def t_interval(values: Sequence[float], alpha: float = 0.05) -> dict[str, Any]:
    """Mean of ``values`` with its two-sided Student t interval (``ci`` NaN for fewer than 2)."""
    from scipy import stats  # scipy comes with scikit-learn, a dependency

    x = np.asarray(values, dtype=float)
    k = int(x.size)
    mean = float(x.mean()) if k else math.nan
    out = {"mean": mean, "ci": [math.nan, math.nan], "sd": math.nan, "n": k, "interval": "t",
           "min": float(x.min()) if k else math.nan, "max": float(x.max()) if k else math.nan}
    if k >= 2:
        sd = float(x.std(ddof=1))
        half = float(stats.t.ppf(1 - alpha / 2, df=k - 1)) * sd / math.sqrt(k)
        out |= {"ci": [mean - half, mean + half], "sd": sd}
    return out


def aggregate(
    per_seed: Mapping[Any, Mapping[str, Any]], alpha: float = 0.05, min_gain: float = DEFAULT_MIN_GAIN
) -> dict[str, Any]:
    """Summarise several seeds' ``rerank_metrics`` (keyed by seed) into the replication result.

    Returns per-seed summaries; the mean gain over one sample and over majority with t intervals
    (see the module docstring); how often each method was chosen and whether one was chosen in
    every seed; the post-hoc best per seed and how often it was the chosen one; how many seeds
    clear ``min_gain`` over one sample and how many have a per-seed CI above 0.
    """
    if not per_seed:
        raise ValueError("no seeds to aggregate")
    seeds = {str(s): seed_summary(m) for s, m in sorted(per_seed.items(), key=lambda kv: _seed_key(kv[0]))}
    rows = list(seeds.values())
    chosen = Counter(r["method"] for r in rows)
    most, count = min(chosen.items(), key=lambda kv: (-kv[1], kv[0]))  # ties: by name
    return {
        "n_seeds": len(rows),
        "seeds": seeds,
        "alpha": alpha,
        "gain_vs_single": t_interval([r["gain_vs_single"] for r in rows], alpha),
        "gain_vs_majority": t_interval([r["gain_vs_majority"] for r in rows], alpha),
        "accuracy": t_interval([r["accuracy"] for r in rows], alpha),
        **{f"{k}_mean": _mean([r[k] for r in rows]) for k in ("single", "majority", "oracle")},
        "cost_ratio_max": max((r["cost_ratio_vs_sampling"] for r in rows
                               if r.get("cost_ratio_vs_sampling") is not None), default=None),
        "chosen_methods": dict(chosen.most_common()),
        "most_chosen": most,
        "same_method_count": count,
        "same_method_every_seed": count == len(rows),
        "post_hoc_best": {s: r["post_hoc_best"] for s, r in seeds.items()},
        "chosen_is_post_hoc_best": sum(r["method"] == r["post_hoc_best"] for r in rows),
        "min_gain": min_gain,
        "seeds_meeting_min_gain": sum(r["gain_vs_single"] >= min_gain - 1e-12 for r in rows),
        # A CI touching 0 does not count (the tolerance absorbs float noise on an exact 0).
        "seeds_gain_ci_above_0": sum(r["gain_vs_single_ci"][0] > 1e-12 for r in rows),
        "seeds_beating_majority": sum(r["gain_vs_majority_ci"][0] > 1e-12 for r in rows),
        # On scored choices: the reference is lm-eval's better rule (chosen per seed on train-side problems).
        **({"reference": dict(Counter(r["reference"] for r in rows)),
            "latent_states": dict(Counter(r["latent_states"] for r in rows if r.get("latent_states"))),
            **{b: _mean([r.get(b) for r in rows]) for b in ("loglik", "loglik_norm")}} if "reference" in rows[0] else {}),
    }


def _mean(values: Sequence[float | None]) -> float | None:
    """Mean of the values present (None when none is)."""
    x = [float(v) for v in values if v is not None]
    return float(np.mean(x)) if x else None


def _seed_key(seed: Any) -> tuple:
    """Numeric seeds in numeric order, then any others by name."""
    text = str(seed)
    return (0, int(text), "") if text.lstrip("-").isdigit() else (1, 0, text)


def _pts(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:+.1f}"


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _ci(pair: Sequence[float], fmt: Any = _pts) -> str:
    return f"[{fmt(pair[0])}, {fmt(pair[1])}]"


def markdown_report(result: Mapping[str, Any], title: str = "Replication across data seeds") -> str:
    """The summary sentence, then one row per seed (chosen method and gains, post-hoc best)."""
    g, gm = result["gain_vs_single"], result["gain_vs_majority"]
    k = result["n_seeds"]
    # On scored choices the reference is lm-eval's better rule, chosen per seed on train-side problems.
    ref = "the lm-eval baseline (the better of acc and acc_norm on train-side problems)" if result.get("reference") else "one sample"
    col = "baseline" if result.get("reference") else "single"
    level = f"{100 * (1 - result['alpha']):.0f}%"
    lines = [
        f"## {title}", "",
        f"Over **{k} data seed{'s' if k != 1 else ''}** the chosen method gains **{_pts(g['mean'])} points** over {ref} "
        f"({level} t interval over seeds {_ci(g['ci'])}) and {_pts(gm['mean'])} {_ci(gm['ci'])} over "
        f"majority vote. The same method (`{result['most_chosen']}`) was chosen in "
        f"{result['same_method_count']} of {k} seeds; the chosen method was the post-hoc best in "
        f"{result['chosen_is_post_hoc_best']} of {k}. Seeds gaining ≥ {_pts(result['min_gain'])} points "
        f"over {col}: {result['seeds_meeting_min_gain']} of {k}; with a per-seed CI above 0: "
        f"{result['seeds_gain_ci_above_0']} of {k}; beating majority (CI above 0): "
        f"{result['seeds_beating_majority']} of {k}.",
        "",
        f"| data seed | chosen (selected on) | acc % [95% CI] | vs {col} (pts) [CI] | vs majority (pts) [CI] "
        f"| {col} % | majority % | pass@N % | post-hoc best (acc %, vs {col}) |",
        "|---|---|---|---|---|---:|---:|---:|---|",
    ]
    for seed, r in result["seeds"].items():
        lines.append(
            f"| {seed} | `{r['method']}` ({r.get('selected_on') or '?'}) | {_pct(r['accuracy'])} {_ci(r['ci'], _pct)} | "
            f"{_pts(r['gain_vs_single'])} {_ci(r['gain_vs_single_ci'])} | "
            f"{_pts(r['gain_vs_majority'])} {_ci(r['gain_vs_majority_ci'])} | {_pct(r['single'])} | "
            f"{_pct(r['majority'])} | {_pct(r['oracle'])} | `{r['post_hoc_best']}` "
            f"({_pct(r['post_hoc_best_accuracy'])}, {_pts(r['post_hoc_best_gain_vs_single'])}) |"
        )
    lines += [
        "",
        f"Per-seed CIs: paired bootstrap over that seed's eval problems. Across seeds: Student t interval "
        f"over the {k} per-seed gains (sd {_pct(g.get('sd'))} points), which says how much the gain moves "
        "with the problems and the split; a bootstrap over so few seeds would be too narrow. The post-hoc "
        "best is picked on eval itself (biased upwards) and shown only for contrast.",
    ]
    if result.get("latent_states"):
        lines += ["", "The LatentEBM's states, chosen per seed by cross-validation on train-side problems: "
                  + ", ".join(f"`{r.get('latent_states')}` (seed {seed})" for seed, r in result["seeds"].items()) + "."]
    return "\n".join(lines) + "\n"
