"""Learning curves: eval accuracy of the learned energies and of the chosen method against the number
of train-side problems they were fit and chosen on (issue 25).

The candidates are sampled once; each point of the curve refits everything that learns (the
ensembles, the hybrid, the cross-validated choice) on the first ``n`` train-side problems of one
seeded permutation, so the subsets are nested and a larger point only adds problems. Eval is the
whole eval split every time. The cost of a point is what sampling its problems cost: the summed
generation seconds of their candidates (recorded per row by the sampler).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = ["nested_sizes", "first_problems", "subset_split", "curve_row", "plot_curve"]


def nested_sizes(sizes: Sequence[int], available: int) -> list[int]:
    """The requested sizes that fit in ``available`` problems, plus ``available`` itself (the full run)."""
    return sorted({int(n) for n in sizes if 0 < int(n) < available} | {int(available)})


def first_problems(problem_ids: Sequence[Any], n: int, seed: int) -> set[str]:
    """The first ``n`` of one seeded permutation of the distinct ``problem_ids``: nested across ``n``."""
    ids = np.array(sorted(set(map(str, problem_ids))))
    return set(ids[np.random.default_rng(seed).permutation(len(ids))[:n]].tolist())


def subset_split(graded: pd.DataFrame, energies: pd.DataFrame, hidden: dict[str, Any] | None,
                 problems: pd.DataFrame, timing: dict[str, float], keep: set[str],
                 ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any] | None, dict[str, float], pd.DataFrame]:
    """One split restricted to the problems in ``keep``: its graded and energies tables, hidden
    states (rows in their order), stage timing scaled by the share of rows kept, and problems (the
    order rerank_eval's node takes a split in)."""
    g = graded[graded["problem_id"].astype(str).isin(keep)].reset_index(drop=True)
    e = energies[energies["problem_id"].astype(str).isin(keep)].reset_index(drop=True)
    p = problems[problems["problem_id"].astype(str).isin(keep)].reset_index(drop=True)
    h = None
    if hidden is not None:
        rows = np.isin(np.asarray(hidden["problem_id"]).astype(str), list(keep))
        h = {k: np.asarray(v)[rows] for k, v in hidden.items()}
    share = len(g) / max(len(graded), 1)
    t = {k: (float(v) * share if isinstance(v, (int, float)) else v) for k, v in timing.items()}
    return g, e, h, t, p


def curve_row(n: int, sampling_seconds: float, result: dict[str, Any], methods: Sequence[str]) -> dict[str, Any]:
    """One point of the curve from a rerank result (:func:`impetus.pipelines.rerank_eval.nodes.rerank_and_evaluate`)."""
    head = result["headline"]
    row = {"n_train_problems": int(n), "sampling_seconds": float(sampling_seconds), "chosen": head["method"],
           "chosen_accuracy": float(head["accuracy"])}
    for name in methods:
        m = result["methods"].get(name)
        row[name] = float(m["accuracy"]) if m is not None else float("nan")
    return row


def plot_curve(rows: pd.DataFrame, methods: Sequence[str]) -> Figure:
    """Eval accuracy against train-side problems (log x), one line per method and the chosen one."""
    fig = Figure(figsize=(7, 4.2))  # not pyplot: no global figure state to leak across points
    ax = fig.add_subplot(1, 1, 1)
    x = rows["n_train_problems"].to_numpy()
    # The chosen method first, wide and light, so a method it coincides with stays visible on top.
    ax.plot(x, 100 * rows["chosen_accuracy"], marker="s", color="black", linewidth=5, alpha=0.25, label="chosen by CV")
    for xi, yi, label in zip(x, 100 * rows["chosen_accuracy"], rows["chosen"]):
        ax.annotate(label, (xi, yi), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7)
    for name in methods:
        if name in rows and rows[name].notna().any():
            ax.plot(x, 100 * rows[name], marker="o", label=name)
    ax.set_xscale("log")
    ax.margins(y=0.15)  # room for the chosen method's labels under the top axis
    ax.set_xticks(x, [str(int(n)) for n in x])
    ax.minorticks_off()
    ax.set_xlabel("train-side problems (fit and chosen on)")
    ax.set_ylabel("eval accuracy %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    secax = ax.secondary_xaxis("top")
    secax.set_xticks(x, [_duration(t) for t in rows["sampling_seconds"]], fontsize=7)
    secax.minorticks_off()
    secax.set_xlabel("what sampling them cost", fontsize=8)
    fig.tight_layout()
    return fig


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
