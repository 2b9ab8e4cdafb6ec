"""V2 report: the methods table at their token budgets, paired comparisons, flips, plots."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from impetus.selection.budget import over_budget_note
from impetus.selection.grid import grid_note


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _settings(result: Mapping[str, Any]) -> str:
    """Which settings ran, and on what they were chosen."""
    keys = ("positions", "prefix_fraction", "window", "steps", "lr", "samples", "radius", "patience")
    per_mode = "; ".join(f"{mode}: " + ", ".join(f"{k} {c[k]}" for k in keys) for mode, c in result["settings"].items())
    if result.get("chosen_on") != "dev":
        return f"Settings as configured (no grid): {per_mode}."
    size = len(next(iter(result["grid_dev_accuracy"].values()), []))
    scores = "; ".join(f"{mode}: " + ", ".join(f"{p['settings']} {100 * p['dev_score']:.1f}%" for p in table)
                       for mode, table in result["grid_dev_accuracy"].items())
    return (f"Settings chosen per mode on {result.get('dev_problems') or 'all'} dev problems by V2's accuracy from "
            f"the first sample ({size} points scored per mode, {grid_note(result)}: {scores}). Chosen: {per_mode}.")


def markdown(result: Mapping[str, Any], v2: pd.DataFrame, examples: int = 3) -> str:
    """Methods by accuracy (V1 at N and at V2's budget), comparisons with CIs, example flips."""
    lines = [
        "## V2: latent optimisation vs its zero-step control and V1 at equal tokens", "",
        f"{result['n_problems']} eval problems. Each V2 method's `_control` twin runs the same pipeline with zero "
        "optimisation steps (the window re-decoded from the unoptimised states); `changed` is the share of answers "
        "whose window some update decoded to other tokens. V1 methods are evaluated on each problem's first n "
        "candidates, with n the smallest whose mean tokens reach the V2 method's (`name@n`). "
        + over_budget_note(result, ["v2", "v2_control"]), "",
        _settings(result), "",
        "| method | family | acc % | 95% CI | control acc % | changed | tokens/problem | s/problem "
        "| energy before → after | flips ✗→✓ / ✓→✗ |",
        "|---|---|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for name, m in sorted(result["methods"].items(), key=lambda kv: -kv[1]["accuracy"]):
        sec = m.get("seconds_per_problem")
        energy = (f"{m['energy_before']:.3f} → {m['energy_after']:.3f}" if "energy_before" in m else "–")
        flips = f"{m['flips_wrong_to_right']} / {m['flips_right_to_wrong']}" if "flips_wrong_to_right" in m else "–"
        changed = f"{100 * m['changed_share']:.0f}%" if "changed_share" in m else "–"
        lines.append(f"| {name} | {m['family']} | {_pct(m['accuracy'])} | [{_pct(m['ci'][0])}, {_pct(m['ci'][1])}] | "
                     f"{_pct(m.get('control_accuracy'))} | {changed} | {m['tokens_per_problem']:.0f} | "
                     f"{'–' if sec is None else f'{sec:.2f}'} | {energy} | {flips} |")
    lines += ["", "| comparison (paired bootstrap) | diff (pts) | 95% CI | p |", "|---|---:|---|---:|"]
    for name, c in result["comparisons"].items():
        lines.append(f"| {name} | {100 * c['diff']:+.1f} | [{100 * c['ci'][0]:+.1f}, {100 * c['ci'][1]:+.1f}] | "
                     f"{c['p_value']:.3f} |")
    for label, mask in (("wrong → right", ~v2["start_correct"] & v2["correct"]),
                        ("right → wrong", v2["start_correct"] & ~v2["correct"])):
        lines += ["", f"### Flips {label} (up to {examples})", ""]
        for _, r in v2[mask].head(examples).iterrows():
            lines.append(f"- `{r['problem_id']}` {r['method']}: start {r['start_text']!r} → {r['text']!r}")
        if not mask.any():
            lines.append("- none")
    return "\n".join(lines + ceiling_lines(result.get("ceiling") or {})) + "\n"


#: Below this gain of the energy's argmin over the control on dev (points), V2 is not worth tuning further.
CEILING_BAR = 3.0


def ceiling_lines(ceiling: Mapping[str, Any]) -> list[str]:
    """The ceiling table (:mod:`impetus.latent.ceiling`), and the verdict on dev."""
    if not ceiling:
        return []
    lines = ["", f"### V2's ceiling: every top-{ceiling['k']} single-token edit where V2 edits", "",
             "From each problem's first sample: at each position of V2's window and at the answer's first token, "
             f"each of the {ceiling['k']} likeliest tokens is forced and the rest decoded greedily. Headroom: the share "
             "of control-wrong answers where some edit is right (no single-token edit there can do better). Argmin: "
             f"the lowest-`{ceiling['energy']}` answer among start, control and edits, against the control.", "",
             "| split | answers | control acc % | oracle acc % | headroom (window / answer token) | argmin acc % "
             "| argmin − control (pts) | 95% CI |", "|---|---:|---:|---:|---|---:|---:|---|"]
    for name in ("dev", "eval"):
        c = ceiling.get(name)
        if not c:
            continue
        kinds = " / ".join(f"{100 * c['oracle_headroom_by_kind'].get(k, 0.0):.0f}%" for k in ("window", "answer"))
        lo, hi = c["argmin_minus_control_ci"]
        lines.append(f"| {name} | {c['n_answers']} | {_pct(c['control_accuracy'])} | {_pct(c['oracle_accuracy'])} | "
                     f"{100 * c['oracle_headroom']:.0f}% ({kinds}) | {_pct(c['argmin_accuracy'])} | "
                     f"{100 * c['argmin_minus_control']:+.1f} | [{100 * lo:+.1f}, {100 * hi:+.1f}] |")
    dev = ceiling.get("dev")
    if dev and 100 * dev["argmin_minus_control"] < CEILING_BAR:
        lines += ["", f"**On dev, the energy's best single-token edit gains {100 * dev['argmin_minus_control']:+.1f} "
                  f"points over the control (< +{CEILING_BAR:g}): no tuning of how V2 moves its latents can reach "
                  "+3 on this testbed with this energy; V2 is not tuned further here.**"]
    return lines


def plots(result: Mapping[str, Any], v2: pd.DataFrame, grade: Callable[[str, str], bool]) -> dict[str, Figure]:
    """Accuracy vs optimisation step, accuracy vs tokens (V1 prefix curves and V2 points), energy
    before vs after."""
    figs = {}
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    for method, g in v2.groupby("method"):
        steps = max(len(t) for t in g["trace"])
        acc = [sum(grade(pid, t[min(s, len(t) - 1)]["best_text"]) for pid, t in zip(g["problem_id"], g["trace"])) / len(g)
               for s in range(steps)]
        ax.plot(range(steps), [100 * a for a in acc], marker="o", label=method)
    ax.set(xlabel="optimisation step", ylabel="accuracy of the best answer so far (%)", title="V2: accuracy vs step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    figs["v2_accuracy_vs_step.png"] = fig

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    for name, m in result["methods"].items():
        marker = "*" if m["family"] == "v2" else "o"
        ax.scatter(m["tokens_per_problem"], 100 * m["accuracy"], marker=marker, s=80 if marker == "*" else 30)
        ax.annotate(name, (m["tokens_per_problem"], 100 * m["accuracy"]), fontsize=6)
    ax.set(xlabel="generated tokens per problem", ylabel="accuracy (%)", title="V2 (stars) vs V1 at equal tokens")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    figs["v2_accuracy_vs_tokens.png"] = fig

    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot(1, 1, 1)
    for method, g in v2.groupby("method"):
        ax.scatter(g["energy_before"], g["energy_after"], s=12, label=method)
    lo, hi = v2[["energy_before", "energy_after"]].min().min(), v2[["energy_before", "energy_after"]].max().max()
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set(xlabel="energy of the start answer", ylabel="energy after V2", title="Energy before vs after")
    ax.legend(fontsize=7)
    fig.tight_layout()
    figs["v2_energy_before_after.png"] = fig
    return figs
