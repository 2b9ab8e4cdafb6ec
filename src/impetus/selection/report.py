"""The V1 evaluation: every selection method on the same candidates, chosen on dev, measured on eval.

Kedro-free so a notebook can rerun it on any candidates table. Two rules keep the numbers honest:

- **Chosen on dev, measured on eval.** The energy-weighted vote's temperature (per energy) and the
  headline method are picked on the dev split (train-side problems the learned energies were not
  fit on); eval only measures. Picking the best of ~30 methods on eval would report a winner's
  curse. The full eval table is still shown, marked post hoc.
- **Costs where they happen.** A method's seconds per problem include the scoring passes it needs
  (cost keys from :mod:`impetus.energy.registry`), not only the argmin.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from impetus.energy.registry import cost_keys
from impetus.selection.metrics import evaluate_methods, paired_bootstrap
from impetus.selection.rules import Selector, get_selector, oracle, select_first, select_majority, selection_correct

BASELINES = ("first", "majority", "oracle")


def build_methods(energy_cols: Sequence[str], taus: Mapping[str, float]) -> dict[str, Selector]:
    """first, majority, argmin of every energy column, ``vote_<col>`` at ``taus[col]``, the oracle."""
    methods: dict[str, Selector] = {"first": select_first, "majority": select_majority}
    for col in energy_cols:
        methods[col] = get_selector("argmin", energy_col=col)
    for col, tau in taus.items():
        if col in energy_cols:
            methods[f"vote_{col}"] = get_selector("weighted_vote", energy_col=col, tau=tau)
    methods["oracle"] = oracle
    return methods


def choose_taus(dev: pd.DataFrame, vote_cols: Sequence[str], tau_grid: Sequence[float]) -> dict[str, float]:
    """Per energy, the vote temperature with the best dev accuracy (ties: the larger, closer to majority)."""
    taus = {}
    for col in vote_cols:
        if col not in dev.columns:
            continue
        acc = {t: float(selection_correct(dev, get_selector("weighted_vote", energy_col=col, tau=t)(dev)).mean())
               for t in tau_grid}
        best = max(acc.values())
        taus[col] = max(t for t, a in acc.items() if a >= best - 1e-12)
    return taus


def method_costs(
    methods: Mapping[str, Selector], stage_seconds: Mapping[str, float], hybrid_cols: Sequence[str]
) -> dict[str, float]:
    """Seconds (whole split) each method needs beyond sampling: the sum of its energy's cost keys."""
    costs = {}
    for name in methods:
        col = name.removeprefix("vote_")
        keys = cost_keys(col, hybrid_cols) if name not in BASELINES else set()
        costs[name] = float(sum(stage_seconds.get(k, 0.0) for k in keys))
    return costs


def evaluate_split(
    df: pd.DataFrame, methods: Mapping[str, Selector], stage_seconds: Mapping[str, float],
    hybrid_cols: Sequence[str], sampling_seconds_per_problem: float, n_boot: int, seed: int,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Every method once on ``df``: metrics with costs, and the chosen ``sample_idx`` per problem."""
    costs = method_costs(methods, stage_seconds, hybrid_cols)
    selections, select_seconds = {}, {}
    for name, sel in methods.items():
        t0 = time.perf_counter()
        selections[name] = sel(df)
        select_seconds[name] = time.perf_counter() - t0
    result = evaluate_methods(df, methods, n_boot=n_boot, seed=seed, selections=selections)
    n_problems = max(result["n_problems"], 1)
    for name, m in result["methods"].items():
        m["seconds_per_problem"] = (costs[name] + select_seconds[name]) / n_problems
        m["cost_ratio_vs_sampling"] = (
            m["seconds_per_problem"] / sampling_seconds_per_problem if sampling_seconds_per_problem else None
        )
    result["sampling_seconds_per_problem"] = sampling_seconds_per_problem
    table = pd.DataFrame(selections)
    table.index.name = "problem_id"
    return result, table.reset_index()


def choose_on_dev(dev_result: Mapping[str, Any], exclude: Sequence[str] = ("first", "oracle")) -> str:
    """The method with the best dev accuracy (ties: cheaper, then name). Majority may win: then the
    honest headline is that no energy beat majority vote on dev."""
    cands = [(m["accuracy"], -(m.get("seconds_per_problem") or 0.0), n)
             for n, m in dev_result["methods"].items() if n not in exclude]
    best = max(a for a, _, _ in cands)
    return max((c for c in cands if c[0] >= best - 1e-12), key=lambda c: (c[1], c[2]))[2]


def headline(dev_result: Mapping[str, Any], eval_result: Mapping[str, Any]) -> dict[str, Any]:
    """The dev-chosen method's eval accuracy with its CI, gain over one sample and cost."""
    name = choose_on_dev(dev_result)
    m = eval_result["methods"][name]
    return {
        "method": name, "selected_on": "dev", "dev_accuracy": dev_result["methods"][name]["accuracy"],
        "accuracy": m["accuracy"], "ci": m["ci"], "gain_vs_single": m["gain_vs_single"],
        "gain_vs_single_ci": m["gain_vs_single_ci"], "gain_vs_majority": m["gain_vs_majority"],
        "cost_ratio_vs_sampling": m.get("cost_ratio_vs_sampling"),
        "post_hoc_best_on_eval": max(
            (n for n in eval_result["methods"] if n not in BASELINES), key=lambda n: eval_result["methods"][n]["accuracy"]
        ),
    }


def compare_methods(df: pd.DataFrame, selections: pd.DataFrame, a: str, b: str, n_boot: int, seed: int) -> dict:
    """Paired bootstrap of method ``a`` minus method ``b`` on the same problems."""
    sel = selections.set_index("problem_id")
    ca = selection_correct(df, sel[a]).to_numpy(float)
    cb = selection_correct(df, sel[b]).to_numpy(float)
    return paired_bootstrap(ca, cb, n_boot=n_boot, seed=seed)


def _fmt(x: float | None, pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "–"
    return f"{100 * x:.1f}" if pct else f"{x:.3f}"


def summary_paragraph(result: Mapping[str, Any]) -> str:
    """One paragraph: the dev-chosen method, its eval accuracy vs one sample with the CI, its cost."""
    h = result["headline"]
    lo, hi = h["ci"]
    glo, ghi = h["gain_vs_single_ci"]
    cost = h.get("cost_ratio_vs_sampling")
    counts = result.get("counts", {})
    return (
        f"**Chosen on dev ({result.get('n_dev_problems', '?')} problems): `{h['method']}`.** On "
        f"{result['n_problems']} held-out eval problems (N = {result['n_candidates']}) it scores "
        f"{_fmt(h['accuracy'])}% [{_fmt(lo)}, {_fmt(hi)}] vs one sample {_fmt(result['single'])}% "
        f"({100 * h['gain_vs_single']:+.1f} points [{100 * glo:+.1f}, {100 * ghi:+.1f}]) and majority vote "
        f"{_fmt(result['majority'])}% ({100 * h['gain_vs_majority']:+.1f}), at "
        f"{'–' if cost is None else f'{100 * cost:.1f}%'} of the sampling time. Oracle (pass@N) "
        f"{_fmt(result['oracle'])}%. Eval candidates without an answer: {counts.get('n_no_answer', '–')}, "
        f"truncated by max_new_tokens: {counts.get('n_truncated', '–')} of {result['n_rows']}."
    )


def adaptive_lines(adaptive: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The adaptive-N table: each rule at its dev-chosen threshold, measured on eval."""
    if not adaptive:
        return []
    lines = [
        "", "### Adaptive N (thresholds chosen on dev, measured on eval)", "",
        "| rule | threshold | acc % | acc % at N_max (same vote) | tokens/problem | at N_max | tokens saved | mean N |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in adaptive.items():
        lines.append(
            f"| {name} | {r['threshold']:g} | {_fmt(r['accuracy'])} | {_fmt(r['accuracy_full_n'])} | "
            f"{r['tokens_per_problem']:.0f} | {r['tokens_per_problem_full_n']:.0f} | {100 * r['tokens_saved']:.1f}% | "
            f"{r['mean_k']:.1f} |"
        )
    return lines


def markdown_report(result: Mapping[str, Any], title: str = "V1 reranking") -> str:
    """Summary paragraph first, then every method's eval numbers (post hoc), best first."""
    rows = sorted(result["methods"].items(), key=lambda kv: -kv[1]["accuracy"])
    dev = result.get("dev_methods", {})
    lines = [
        f"## {title}", "", summary_paragraph(result), "",
        f"Every method on eval (**post hoc**: the best row here is not the headline, which was chosen "
        f"on dev). Sampling: {result['sampling_seconds_per_problem']:.2f} s/problem. Vote temperatures "
        f"(chosen on dev): {', '.join(f'{k} {v:g}' for k, v in result.get('taus', {}).items()) or '–'}.",
        "",
        "| method | dev acc % | acc % | 95% CI | vs single (pts) [95% CI] | vs majority (pts) | gap closure "
        "| AUROC | AUROC within | s/problem | cost / sampling |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in rows:
        lo, hi = m["ci"]
        glo, ghi = m["gain_vs_single_ci"]
        ratio = m.get("cost_ratio_vs_sampling")
        mark = " ◀ headline" if name == result["headline"]["method"] else ""
        lines.append(
            f"| {name}{mark} | {_fmt((dev.get(name) or {}).get('accuracy'))} | {_fmt(m['accuracy'])} | "
            f"[{_fmt(lo)}, {_fmt(hi)}] | {100 * m['gain_vs_single']:+.1f} [{100 * glo:+.1f}, {100 * ghi:+.1f}] | "
            f"{100 * m['gain_vs_majority']:+.1f} | {_fmt(m['gap_closure'], pct=False)} | "
            f"{_fmt(m['auroc'], pct=False)} | {_fmt(m.get('auroc_within'), pct=False)} | "
            f"{m['seconds_per_problem']:.4f} | {'–' if ratio is None else f'{100 * ratio:.2f}%'} |"
        )
    lines += adaptive_lines(result.get("adaptive", {}))
    lines += [
        "",
        "Gap closure = (acc − majority) / (oracle − majority). AUROC: the energy as a detector of right vs "
        "wrong candidates pooled over problems; AUROC within: the same inside each problem with both right "
        "and wrong candidates, averaged (what a reranker can use). Cost includes the scoring passes each "
        "method needs.",
    ]
    return "\n".join(lines) + "\n"


def _sampling_seconds_per_problem(df: pd.DataFrame) -> float:
    # The sampler attributes each row its share of every forward pass, so a problem's sum is its cost.
    return float(df.groupby("problem_id")["gen_seconds"].sum().mean())


def rerank_evaluation(
    dev: pd.DataFrame, evals: pd.DataFrame, energy_cols: Sequence[str], hybrid_cols: Sequence[str],
    dev_seconds: Mapping[str, float], eval_seconds: Mapping[str, float], params: Any,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """The whole V1 evaluation (``params``: :class:`impetus.framework.config.RerankParams`).

    Vote temperatures and the headline method are chosen on ``dev``; every method is then measured
    once on ``evals``. Returns the result (eval metrics per method, dev accuracies, taus, headline,
    counts) and the eval selections table.
    """
    taus = choose_taus(dev, params.weighted_vote, params.tau_grid)
    methods = build_methods(energy_cols, taus)
    dev_result, _ = evaluate_split(dev, methods, dev_seconds, hybrid_cols, _sampling_seconds_per_problem(dev),
                                   n_boot=params.n_boot, seed=params.seed)
    result, selections = evaluate_split(evals, methods, eval_seconds, hybrid_cols,
                                        _sampling_seconds_per_problem(evals), n_boot=params.n_boot, seed=params.seed)
    result["taus"] = taus
    result["dev_methods"] = {n: {"accuracy": m["accuracy"], "ci": m["ci"]} for n, m in dev_result["methods"].items()}
    result["n_dev_problems"] = dev_result["n_problems"]
    result["headline"] = headline(dev_result, result)
    result["counts"] = {
        "n_no_answer": int(evals["answer"].isna().sum()),
        "n_truncated": int((evals["finish_reason"] == "length").sum()) if "finish_reason" in evals else None,
    }
    return result, selections
