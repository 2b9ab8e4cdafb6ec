"""The results matrix: one row per benchmark × model, from each one's ``replication.json``.

Kedro-free and pure (``make matrix`` feeds it the files under
``data/08_reporting/replication/<name>/``). A row's gain interval is the Student t interval over
its data seeds (:func:`impetus.selection.replication.t_interval`) when it has two or more seeds,
else that one seed's paired bootstrap CI over eval problems; the table says which.

The bar each row is held to (the project's brief): a gain over the base model's single answer of
at least +3 points ("minimum") or +8 ("ideal"), at no significant latency; a row meets a bar only
when its mean gain clears it *and* its interval's lower end is above 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

#: The brief's bars on the gain over one sample, in points: minimum and ideal.
BARS = (("ideal", 0.08), ("minimum", 0.03))


def matrix_row(result: Mapping[str, Any], name: str) -> dict[str, Any]:
    """One row of the matrix from one ``replication.json`` (``name``: its folder, shown if the
    file names no benchmark or model)."""
    seeds = list(result["seeds"].values())
    gain = result["gain_vs_single"]
    if len(seeds) >= 2:
        ci, interval = list(gain["ci"]), "t over seeds"
    else:
        ci, interval = list(seeds[0]["gain_vs_single_ci"]), "bootstrap over problems"
    best = {s: r["post_hoc_best"] for s, r in result["seeds"].items()}
    return {
        "name": name,
        "benchmark": result.get("benchmark") or name,
        "model": result.get("model") or "?",
        "n_seeds": len(seeds),
        "n_problems": seeds[0].get("n_problems"),
        "n_candidates": seeds[0].get("n_candidates"),
        "single": result.get("single_mean", _mean(r.get("single") for r in seeds)),
        "majority": result.get("majority_mean", _mean(r.get("majority") for r in seeds)),
        "oracle": result.get("oracle_mean", _mean(r.get("oracle") for r in seeds)),
        "chosen": dict(result["chosen_methods"]),
        "accuracy": result["accuracy"]["mean"],
        "gain": gain["mean"],
        "gain_ci": ci,
        "interval": interval,
        "gain_vs_majority": result["gain_vs_majority"]["mean"],
        "post_hoc_best": best,
        "post_hoc_gain": _mean(r["post_hoc_best_gain_vs_single"] for r in seeds),
        "cost_ratio_max": result.get("cost_ratio_max", _max(r.get("cost_ratio_vs_sampling") for r in seeds)),
        "bar": bar_met(gain["mean"], ci),
        # Scored choices: "single" is lm-eval's better rule (chosen on train-side problems), named here.
        "reference": ", ".join(f"`{k}`" for k in result["reference"]) if result.get("reference") else None,
        "loglik": result.get("loglik"), "loglik_norm": result.get("loglik_norm"),
        "latent_states": result.get("latent_states"),
    }


def bar_met(gain: float, ci: Sequence[float]) -> str:
    """``"ideal"``, ``"minimum"`` or ``"none"``: the highest bar (:data:`BARS`) the gain clears with
    its interval's lower end above 0."""
    if not (ci[0] > 1e-12):
        return "none"
    return next((name for name, bar in BARS if gain >= bar - 1e-12), "none")


def markdown_matrix(rows: Sequence[Mapping[str, Any]]) -> str:
    """The matrix as a markdown table, rows sorted by benchmark then model."""
    lines = [
        "| benchmark | model | baseline % | majority % | lm-eval acc / acc_norm % | chosen by CV (times chosen) | "
        "chosen: acc % | gain vs baseline (pts) [95% CI] | vs majority (pts) | best post hoc (gain) | pass@N % | "
        "cost / sampling (max) | seeds × eval problems × N | brief's bar |",
        "|---|---|---:|---:|---:|---|---:|---|---:|---|---:|---:|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (str(r["benchmark"]), str(r["model"]))):
        chosen = ", ".join(f"`{m}` ×{k}" for m, k in r["chosen"].items())
        if r.get("latent_states"):  # which layers the LatentEBM read
            chosen += "; LatentEBM on " + ", ".join(f"`{m}` ×{k}" for m, k in r["latent_states"].items())
        best = ", ".join(sorted(set(r["post_hoc_best"].values())))
        base = _pct(r["single"]) + (f" ({r['reference']})" if r.get("reference") else "")
        lm_eval = f"{_pct(r.get('loglik'))} / {_pct(r.get('loglik_norm'))}" if r.get("reference") else "–"
        lines.append(
            f"| {_label(r)} | {r['model']} | {base} | {_pct(r['majority'])} | {lm_eval} | {chosen} | "
            f"{_pct(r['accuracy'])} | **{_pts(r['gain'])}** [{_pts(r['gain_ci'][0])}, {_pts(r['gain_ci'][1])}] "
            f"({r['interval']}) | {_pts(r['gain_vs_majority'])} | `{best}` ({_pts(r['post_hoc_gain'])}) | "
            f"{_pct(r['oracle'])} | {_share(r['cost_ratio_max'])} | "
            f"{r['n_seeds']} × {r['n_problems']} × {r['n_candidates']} | {r['bar']} |"
        )
    lines += ["", "Baseline: one sample on sampled candidates; on scored choices (ARC, BBH option tasks) the better "
              "of lm-evaluation-harness's acc and acc_norm, chosen per seed on train-side problems (named)."]
    return "\n".join(lines) + "\n"


def _label(row: Mapping[str, Any]) -> str:
    """The benchmark, with the replication's folder when it says more (``arith (large)``)."""
    return row["benchmark"] if row["name"] == row["benchmark"] else f"{row['benchmark']} ({row['name']})"


def _mean(values: Any) -> float | None:
    x = [float(v) for v in values if v is not None]
    return sum(x) / len(x) if x else None


def _max(values: Any) -> float | None:
    x = [float(v) for v in values if v is not None]
    return max(x) if x else None


def _missing(x: float | None) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _pct(x: float | None) -> str:
    return "–" if _missing(x) else f"{100 * x:.1f}"


def _pts(x: float | None) -> str:
    return "–" if _missing(x) else f"{100 * x:+.1f}"


def _share(x: float | None) -> str:
    return "–" if _missing(x) else f"{100 * x:.2f}%"
