"""The compute-matched report: the choice per budget and every option on one accuracy-vs-tokens plot."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
from matplotlib.figure import Figure


RULES = {
    "best_dev": "the one with the best dev accuracy is chosen",
    "beats_headline": ("the one with the best dev accuracy (`best on dev`) is chosen only if its paired dev CI against "
                       "the V1 headline at that budget lies above 0, else the headline"),
}


def _acc(s: Mapping[str, Any] | None, split: str = "eval") -> str:
    if s is None or s.get(f"{split}_accuracy") is None:
        return "–"
    ci = f" [{100 * s['eval_ci'][0]:.1f}, {100 * s['eval_ci'][1]:.1f}]" if split == "eval" else ""
    return f"{100 * s[f'{split}_accuracy']:.1f}{ci}"


def _name(s: Mapping[str, Any] | None) -> str:
    return "none fits" if s is None else f"{s['family']} `{s['name']}`"


def _gap(d: Mapping[str, float] | None) -> str:
    return "–" if d is None else f"{100 * d['mean_diff']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"


def markdown(result: Mapping[str, Any]) -> str:
    """Per budget: the dev choice, its eval accuracy, the V1 headline at the same budget, the paired gap."""
    lines = [
        "## One compute-matched choice among V1, V2 and EBD", "",
        f"{result['eval_problems']} eval and {result['dev_problems']} dev problems shared by every option. A budget "
        f"of b × one V1 sample ({result['unit_tokens']:.0f} tokens per problem on dev) admits the options whose mean "
        "dev tokens fit; " + RULES[result.get("rule", "best_dev")] + " (train-side data only). The choice is "
        f"measured once on eval against the V1 headline `{result['headline_v1']}` at the largest n that fits the "
        "same budget."
        + (f" Not choosable (no dev measurement): {', '.join(result['not_choosable'])}." if result["not_choosable"]
           else ""), "",
        "| budget | best on dev | its dev gap to the headline | chosen | dev acc % | eval acc % [95% CI] "
        "| eval tokens | V1 headline | its eval acc % | chosen − headline on eval [95% CI] |",
        "|---|---|---|---|---:|---|---:|---|---|---|",
    ]
    for r in result["budgets"]:
        c, h = r["chosen"], r["v1_headline"]
        best = r.get("best_dev")
        tokens = "–" if c is None else f"{c['eval_tokens']:.0f}"
        lines.append(f"| {r['budget_x']:g}× ({r['budget_tokens']:.0f}) | {_name(best)} | "
                     f"{_gap(r.get('best_dev_vs_headline_on_dev'))} | {_name(c)} | {_acc(c, 'dev')} | {_acc(c)} | "
                     f"{tokens} | {'–' if h is None else '`' + h['name'] + '`'} | {_acc(h)} | "
                     f"{_gap(r.get('vs_headline'))} |")
    lines += ["", "Every option (eval accuracy and tokens on the shared problems):", "",
              "| family | option | eval acc % [95% CI] | eval tokens | dev acc % | dev tokens |",
              "|---|---|---|---:|---:|---:|"]
    for o in sorted(result["options"], key=lambda o: (o["family"], o["eval_tokens"])):
        dev_t = "–" if o["dev_tokens"] is None else f"{o['dev_tokens']:.0f}"
        lines.append(f"| {o['family']} | `{o['name']}` | {_acc(o)} | {o['eval_tokens']:.0f} | {_acc(o, 'dev')} "
                     f"| {dev_t} |")
    return "\n".join(lines) + "\n"


def plot(result: Mapping[str, Any]) -> Figure:
    """Eval accuracy vs tokens per problem: V1 methods over n, EBD's answers over MH steps, V2's
    methods as points; each budget's choice ringed."""
    fig = Figure(figsize=(10, 5))
    ax = fig.add_subplot(1, 1, 1)
    opts = pd.DataFrame(result["options"])
    opts["series"] = opts["name"].str.replace(r"@\d+( steps)?$", "", regex=True)
    for (family, series), d in opts.groupby(["family", "series"]):
        d = d.sort_values("eval_tokens")
        style = {"v1": dict(marker=".", lw=1), "ebd": dict(marker="*", lw=2),
                 "v2": dict(marker="x" if series.endswith("_control") else "s", lw=0)}[family]
        ax.plot(d["eval_tokens"], 100 * d["eval_accuracy"], label=f"{series} ({family.upper()})", **style)
    picks = [r["chosen"] for r in result["budgets"] if r["chosen"] is not None]
    if picks:
        ax.scatter([p["eval_tokens"] for p in picks], [100 * p["eval_accuracy"] for p in picks], s=160,
                   facecolors="none", edgecolors="k", label="chosen on dev (per budget)")
    ax.set(xlabel="generated tokens per problem", ylabel="eval accuracy (%)", xscale="log",
           title="V1, V2 and EBD at equal tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: V2 alone has 16 entries
    fig.tight_layout()
    return fig
