"""The V1 evaluation as one function: every selection method on the same eval candidates.

Kedro-free so a notebook can rerun it on any candidates table. Costs are accounted honestly: a
method's seconds per problem include the teacher-forced pass / embeddings / EBM scoring it needs,
not only the argmin.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from impetus.selection.metrics import accuracy_vs_n, evaluate_methods
from impetus.selection.plots import plot_accuracy_vs_n, plot_energy_histograms, plot_roc
from impetus.selection.rules import Selector, get_selector, oracle, select_first, select_majority

LM_PASS = "lm_pass"  # cost key: the teacher-forced forward pass of the energies stage
EMBED = "embedding"  # cost key: sentence embeddings of the completions


def build_methods(energy_cols: Sequence[str], vote_cols: Sequence[str], tau: float) -> dict[str, Selector]:
    """first, majority, argmin of every energy column, energy-weighted votes, and the oracle."""
    methods: dict[str, Selector] = {"first": select_first, "majority": select_majority}
    for col in energy_cols:
        methods[col] = get_selector("argmin", energy_col=col)
    for col in vote_cols:
        if col in energy_cols:
            methods[f"vote_{col}"] = get_selector("weighted_vote", energy_col=col, tau=tau)
    methods["oracle"] = oracle
    return methods


def method_costs(
    methods: Mapping[str, Selector], energy_cols: Sequence[str], stage_seconds: Mapping[str, float]
) -> dict[str, float]:
    """Seconds (whole eval set) each method needs beyond sampling, before its own selection time.

    ``stage_seconds`` holds ``lm_pass``, ``embedding`` and the learned energies' scoring seconds.
    """
    lm, emb = stage_seconds.get(LM_PASS, 0.0), stage_seconds.get(EMBED, 0.0)
    text, latent = stage_seconds.get("text_ebm", 0.0), stage_seconds.get("latent_ebm", 0.0)
    by_col = {c: lm for c in energy_cols}  # logit energies come from the teacher-forced pass
    by_col.update(
        answer_agreement=0.0,  # answers are extracted at grading time
        embedding_consistency=emb,
        text_ebm=text,
        latent_ebm=lm + latent,  # needs the pass's hidden states
        hybrid=lm + emb + text + latent + stage_seconds.get("hybrid", 0.0),
    )
    costs = {}
    for name in methods:
        col = name.removeprefix("vote_")
        costs[name] = by_col.get(col, 0.0)
    return costs


def evaluate_all(
    df: pd.DataFrame,
    energy_cols: Sequence[str],
    vote_cols: Sequence[str],
    tau: float,
    stage_seconds: Mapping[str, float],
    sampling_seconds_per_problem: float,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Selector]]:
    """Metrics for every method, the chosen ``sample_idx`` per (problem, method), and the methods."""
    methods = build_methods(energy_cols, vote_cols, tau)
    result = evaluate_methods(df, methods, n_boot=n_boot, seed=seed)
    n_problems = result["n_problems"]
    costs = method_costs(methods, energy_cols, stage_seconds)
    selections = {}
    for name, sel in methods.items():
        t0 = time.perf_counter()
        selections[name] = sel(df)
        select_seconds = time.perf_counter() - t0
        per_problem = (costs[name] + select_seconds) / max(n_problems, 1)
        m = result["methods"][name]
        m["seconds_per_problem"] = per_problem
        m["cost_ratio_vs_sampling"] = per_problem / sampling_seconds_per_problem if sampling_seconds_per_problem else None
    result["sampling_seconds_per_problem"] = sampling_seconds_per_problem
    table = pd.DataFrame(selections)
    table.index.name = "problem_id"
    return result, table.reset_index(), methods


def best_method(result: Mapping[str, Any], exclude: Sequence[str] = ("oracle", "first", "majority")) -> str | None:
    """Name of the most accurate non-baseline method (ties: the cheaper one)."""
    cands = [(m["accuracy"], -(m["seconds_per_problem"] or 0), n) for n, m in result["methods"].items() if n not in exclude]
    return max(cands)[2] if cands else None


def mlflow_metrics(result: Mapping[str, Any]) -> dict[str, float | None]:
    """Flat ``metric/method`` names (``accuracy/majority``) so runs compare side by side in MLflow."""
    flat: dict[str, float | None] = {}
    for name, m in result["methods"].items():
        for key, value in m.items():
            if isinstance(value, (list, tuple)):
                flat[f"{key}_lo/{name}"], flat[f"{key}_hi/{name}"] = value
            else:
                flat[f"{key}/{name}"] = value
    for key in ("single", "majority", "oracle", "n_problems", "n_candidates", "sampling_seconds_per_problem"):
        flat[f"rerank/{key}"] = result.get(key)
    return flat


def _fmt(x: float | None, pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "–"
    return f"{100 * x:.1f}" if pct else f"{x:.3f}"


def markdown_report(result: Mapping[str, Any], title: str = "V1 reranking") -> str:
    """A markdown table of every method, best first, with CIs, gains, gap closure, AUROC and cost."""
    rows = sorted(result["methods"].items(), key=lambda kv: -kv[1]["accuracy"])
    lines = [
        f"## {title}",
        "",
        f"{result['n_problems']} eval problems, N = {result['n_candidates']} candidates each. "
        f"Single sample {_fmt(result['single'])}%, majority vote {_fmt(result['majority'])}%, "
        f"oracle (pass@N) {_fmt(result['oracle'])}%. Sampling: "
        f"{result['sampling_seconds_per_problem']:.2f} s/problem.",
        "",
        "| method | acc % | 95% CI | vs single (pts) [95% CI] | vs majority (pts) | gap closure | AUROC | s/problem | cost / sampling |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in rows:
        lo, hi = m["ci"]
        glo, ghi = m["gain_vs_single_ci"]
        ratio = m.get("cost_ratio_vs_sampling")
        lines.append(
            f"| {name} | {_fmt(m['accuracy'])} | [{_fmt(lo)}, {_fmt(hi)}] | "
            f"{100 * m['gain_vs_single']:+.1f} [{100 * glo:+.1f}, {100 * ghi:+.1f}] | "
            f"{100 * m['gain_vs_majority']:+.1f} | {_fmt(m['gap_closure'], pct=False)} | "
            f"{_fmt(m['auroc'], pct=False)} | {m['seconds_per_problem']:.4f} | "
            f"{'–' if ratio is None else f'{100 * ratio:.2f}%'} |"
        )
    lines += [
        "",
        "Gap closure = (acc − majority) / (oracle − majority); AUROC: the energy as a detector of "
        "right vs wrong candidates; cost includes the scoring passes each method needs.",
    ]
    return "\n".join(lines) + "\n"


def make_plots(
    df: pd.DataFrame, methods: Mapping[str, Selector], curve_names: Sequence[str], energy_cols: Sequence[str],
    n_subsamples: int, seed: int,
) -> tuple[Figure, Figure, Figure, dict[str, pd.DataFrame]]:
    """Accuracy-vs-N curves, ROC curves and right/wrong energy histograms."""
    curves = {
        name: accuracy_vs_n(df, methods[name], n_subsamples=n_subsamples, seed=seed)
        for name in curve_names if name in methods
    }
    orc = accuracy_vs_n(df, oracle, n_subsamples=n_subsamples, seed=seed)
    return (
        plot_accuracy_vs_n(curves, oracle=orc),
        plot_roc(df, energy_cols),
        plot_energy_histograms(df, energy_cols),
        {**curves, "oracle": orc},
    )
