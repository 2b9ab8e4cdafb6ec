"""EBD report: methods at their token budgets, paired comparisons, and the accuracy-vs-tokens plot."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from impetus.selection.budget import over_budget_note
from impetus.selection.grid import grid_note


KERNELS = {"resample": "proposals regenerate from a block boundary",
           "differ": "proposals regenerate from a block boundary inside the answer and must change its first token"}


def _sampler(result: Mapping[str, Any]) -> str:
    """What drew EBD's answers: MH chains, or Power-SMC's particles."""
    if result.get("kernel") == "smc":
        return (f"block {result['block']} tokens, Power-SMC: {result['chains'] * result['n_init']} particles grown "
                "from the prompt, resampled toward p_LM^α when their ESS fell below half, tilted at the end "
                "(`ebd_vote`: majority after resampling by the tilted weights).")
    return (f"block {result['block']} tokens, {result['chains']} chains × {result['steps']} steps ("
            + KERNELS[result.get("kernel", "resample")] + "), each chain started from the "
            f"lowest-energy of {result['n_init']} candidates.")


def _latency(result: Mapping[str, Any]) -> str:
    """EBD's seconds per problem against sampling the candidates it stands in for."""
    x = result.get("latency_vs_sampling")
    if x is None:
        return ""
    return (f" Latency: {x:.2f}× the sampler's seconds for {result['chains'] * result['n_init']} candidates "
            f"({result['sampling_seconds_per_problem']:.2f} s/problem, timed by v1_rerank's run).")


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _chosen(result: Mapping[str, Any]) -> str:
    """On what the settings were chosen."""
    chosen = result.get("chosen_method", "ebd_lowest")
    if result.get("chosen_on") != "dev":
        return f"Settings as configured (no grid); EBD's answer: `{chosen}`."
    points = ", ".join(f"{p['settings']} {100 * p['dev_score']:.1f}%"
                       + (f" (acceptance {_pct(p['dev_acceptance'])}, of changed proposals "
                          f"{_pct(p.get('dev_acceptance_of_changes'))})" if "dev_acceptance" in p else "")
                       for p in result["grid_dev_accuracy"])
    return (f"Settings chosen on {result.get('dev_problems') or 'all'} dev problems by the accuracy of the answer "
            f"each point names ({len(result['grid_dev_accuracy'])} points scored, {grid_note(result)}: {points}). "
            f"EBD's answer: `{chosen}`.")


def _is_smc(result: Mapping[str, Any]) -> bool:
    return result.get("kernel") == "smc"


def _decoding(result: Mapping[str, Any]) -> str:
    """How the answers' statistics were obtained: MH proposals' cache reuse, or SMC's recording."""
    if _is_smc(result):
        return "Particles decode with recording on; their energies are scored from the recorded values."
    return ("Proposals continue each chain's KV cache and are scored from recorded values."
            if result.get("reuse_cache") else
            "This model's cache cannot be continued: proposals re-encode prompt + prefix.")


def markdown(result: Mapping[str, Any]) -> str:
    """Methods by accuracy and paired comparisons with CIs."""
    kind = "Power-SMC" if _is_smc(result) else "block-wise Metropolis–Hastings"
    legend = ([] if _is_smc(result) else [
        "`changed`: the share of proposals that differ from the chain's answer; `accepted of changed`: their "
        "acceptance (an identical proposal is always accepted, so only these show the tilt at work).", ""])
    lines = [
        f"## EBD: {kind} vs best-of-N and V1 at equal tokens", "",
        f"{result['n_problems']} eval problems; target p_LM^α·exp(−E/τ) with energy `{result['energy']}`, "
        f"τ = {result['tau']:g}, α = {result['alpha']:g} (proposals at temperature {1 / result['alpha']:.2g}), "
        + _sampler(result) + _latency(result) + f" {_chosen(result)} `name@n`: the V1 method on "
        "each problem's first n candidates, n the smallest whose tokens reach EBD's (best-of-N = argmin of the same "
        "energy). " + _decoding(result) + (" " + over_budget_note(result, ["ebd"])).rstrip(), "",
        *legend,
        "| method | family | acc % | 95% CI | tokens/problem | s/problem | MH acceptance | changed "
        "| accepted of changed |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in sorted(result["methods"].items(), key=lambda kv: -kv[1]["accuracy"]):
        sec, acc = m.get("seconds_per_problem"), m.get("acceptance")
        lines.append(f"| {name} | {m['family']} | {100 * m['accuracy']:.1f} | [{100 * m['ci'][0]:.1f}, "
                     f"{100 * m['ci'][1]:.1f}] | {m['tokens_per_problem']:.0f} | {'–' if sec is None else f'{sec:.2f}'} | "
                     f"{'–' if acc is None else f'{acc:.2f}'} | {_pct(m.get('changed_proposals'))} | "
                     f"{_pct(m.get('acceptance_of_changes'))} |")
    lines += ["", "| comparison (paired bootstrap) | diff (pts) | 95% CI | p |", "|---|---:|---|---:|"]
    for name, c in result["comparisons"].items():
        lines.append(f"| {name} | {100 * c['diff']:+.1f} | [{100 * c['ci'][0]:+.1f}, {100 * c['ci'][1]:+.1f}] | "
                     f"{c['p_value']:.3f} |")
    return "\n".join(lines) + "\n"


def plot_tokens(result: Mapping[str, Any]) -> Figure:
    """Accuracy vs generated tokens per problem: EBD after each step, V1 methods over n."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for name, points in result["v1_curves"].items():
        d = pd.DataFrame(points)
        ax.plot(d["tokens_per_problem"], 100 * d["accuracy"], marker=".", label=f"{name} (V1, n = 1..N)")
    ebd = pd.DataFrame(result["ebd_curve"])
    for name, d in ebd.groupby("method"):
        ax.plot(d["tokens_per_problem"], 100 * d["accuracy"], marker="*", lw=2,
                label=f"{name} (Power-SMC)" if _is_smc(result) else f"{name} (per MH step)")
    ax.set(xlabel="generated tokens per problem", ylabel="accuracy (%)", title="EBD vs best-of-N and V1")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
