"""Figures for the rerank report (matplotlib, Agg backend; every function returns a ``Figure``).

Figures are returned rather than saved so the Kedro catalog (``matplotlib.MatplotlibDataset``)
or a notebook decides where they go. Uses the object-oriented API (``Figure`` without pyplot) so
no global figure state leaks between nodes or tests.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: pipelines and CI have no display

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from impetus.selection.metrics import accuracy_vs_n
from impetus.selection.rules import Selector, oracle

__all__ = ["plot_accuracy_vs_n", "plot_roc", "plot_energy_histograms", "plot_adaptive", "make_plots"]


def plot_accuracy_vs_n(
    curves: Mapping[str, pd.DataFrame],
    oracle: pd.DataFrame | None = None,
    title: str = "Accuracy vs. number of candidates N",
) -> Figure:
    """One line per method (``DataFrame(n, accuracy, std)`` from ``accuracy_vs_n``), ±1 std band,
    plus the pass@N oracle as a dashed black line. x-axis is log2(N), as in best-of-N studies."""
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot(1, 1, 1)
    for name, c in curves.items():
        (line,) = ax.plot(c["n"], c["accuracy"], marker="o", label=name)
        if "std" in c:
            ax.fill_between(
                c["n"], c["accuracy"] - c["std"], c["accuracy"] + c["std"], color=line.get_color(), alpha=0.15
            )
    if oracle is not None:
        ax.plot(oracle["n"], oracle["accuracy"], "k--", marker="x", label="oracle (pass@N)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (candidates per problem)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def plot_roc(
    df: pd.DataFrame,
    energy_cols: Sequence[str],
    label_col: str = "correct",
    title: str = "ROC of energies as correctness detectors",
) -> Figure:
    """ROC curve per energy column, scored on ``-energy`` (lower = better), plus the chance line.

    Columns with a single class or all-NaN are skipped (listed in the title)."""
    fig = Figure(figsize=(5.6, 5.2))
    ax = fig.add_subplot(1, 1, 1)
    skipped = []
    for col in energy_cols:
        e = df[col].to_numpy(dtype=float)
        y = df[label_col].to_numpy(dtype=bool)
        keep = ~np.isnan(e)
        y, e = y[keep], e[keep]
        if y.size == 0 or y.all() or (~y).all():
            skipped.append(col)
            continue
        fpr, tpr, _ = roc_curve(y, -e)
        ax.plot(fpr, tpr, label=f"{col} (AUC={roc_auc_score(y, -e):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax.set_xlabel("false positive rate (wrong accepted)")
    ax.set_ylabel("true positive rate (right accepted)")
    ax.set_title(title + (f"\n(skipped: {', '.join(skipped)})" if skipped else ""))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


def plot_energy_histograms(
    df: pd.DataFrame,
    energy_cols: Sequence[str],
    label_col: str = "correct",
    bins: int = 30,
    ncols: int = 3,
    title: str = "Energy distributions: right vs. wrong candidates",
) -> Figure:
    """Grid with one panel per energy: overlaid density histograms for right and wrong candidates.

    Unused grid cells are removed, so ``len(fig.axes) == len(energy_cols)``."""
    n = max(1, len(energy_cols))
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.0 * ncols, 3.2 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    y = df[label_col].to_numpy(dtype=bool)
    for ax, col in zip(axes, energy_cols):
        e = df[col].to_numpy(dtype=float)
        finite = np.isfinite(e)
        # Shared bin edges so the two histograms are directly comparable.
        if not finite.any():
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
        else:
            edges = np.histogram_bin_edges(e[finite], bins=bins)
            for sel, color, name in ((finite & y, "tab:green", "right"), (finite & ~y, "tab:red", "wrong")):
                if sel.any():  # density of an empty class is undefined (0/0)
                    # One filled step patch per class, not a bar per bin as ``hist`` draws: the same
                    # picture, and a report's ~20 panels lay out in a fraction of the time.
                    density, _ = np.histogram(e[sel], bins=edges, density=True)
                    ax.stairs(density, edges, fill=True, alpha=0.55, color=color, label=f"{name} (n={sel.sum()})")
            ax.legend(fontsize="small")
        ax.set_title(col)
        ax.set_xlabel("energy (lower = better)")
        ax.set_ylabel("density")
    for ax in axes[len(energy_cols):]:
        fig.delaxes(ax)
    fig.suptitle(title)
    # tight_layout ignores the suptitle: keep the top ~0.4 inch for it, above the first row's titles.
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - 0.4 / fig.get_figheight()))
    return fig


def make_plots(
    df: pd.DataFrame, methods: Mapping[str, Selector], curve_names: Sequence[str], energy_cols: Sequence[str],
    n_subsamples: int, seed: int,
) -> tuple[dict[str, Figure], dict[str, pd.DataFrame]]:
    """Accuracy-vs-N curves, ROC curves and right/wrong energy histograms as ``{file name: figure}``,
    plus the curves' tables (the oracle's included)."""
    curves = {
        name: accuracy_vs_n(df, methods[name], n_subsamples=n_subsamples, seed=seed)
        for name in curve_names if name in methods
    }
    orc = accuracy_vs_n(df, oracle, n_subsamples=n_subsamples, seed=seed)
    figures = {
        "accuracy_vs_n.png": plot_accuracy_vs_n(curves, oracle=orc),
        "roc.png": plot_roc(df, energy_cols),
        "energy_histograms.png": plot_energy_histograms(df, energy_cols),
    }
    return figures, {**curves, "oracle": orc}


def plot_adaptive(points: pd.DataFrame, chosen: Mapping[str, Mapping[str, float]]) -> Figure:
    """Accuracy against mean sampled tokens per problem: each rule's vote at fixed k = 1..N waves
    (a line: no stopping), its thresholds (dots) and the threshold chosen on the selection data (a star)."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    colors = {}
    for name in chosen:
        fixed = points[points["rule"] == f"{name}@k"].sort_values("tokens_per_problem")
        (line,) = ax.plot(fixed["tokens_per_problem"], 100 * fixed["accuracy"], "-", alpha=0.6,
                          label=f"{name}, fixed N")
        colors[name] = line.get_color()
        pts = points[points["rule"] == name]
        ax.scatter(pts["tokens_per_problem"], 100 * pts["accuracy"], s=14, color=colors[name])
        c = chosen[name]
        ax.scatter([c["tokens_per_problem"]], [100 * c["accuracy"]], marker="*", s=160, color=colors[name],
                   edgecolor="black", label=f"{name}, adaptive (chosen threshold {c['threshold']:g})")
    ax.set_xlabel("mean sampled tokens per problem")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Adaptive N on eval: accuracy vs sampled tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def plot_layer_auroc(features: Mapping[str, object]) -> Figure:
    """Which layer carries the signal: each candidate feature set's out-of-fold within-problem AUROC
    (``hidden_source: cv``, :mod:`impetus.learned.layers`), the chosen one darker, top-1 % on the bars."""
    table = features["cv"]
    names = list(table)
    auroc = [table[n]["auroc"] for n in names]
    fig = Figure(figsize=(max(5.0, 1.1 * len(names)), 3.8))
    ax = fig.add_subplot(1, 1, 1)
    colors = ["tab:blue" if n == features["source"] else "lightsteelblue" for n in names]
    bars = ax.bar(range(len(names)), auroc, color=colors)
    for bar, n in zip(bars, names):
        ax.annotate(f"top-1 {100 * table[n]['top1']:.1f}%", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    textcoords="offset points", xytext=(0, 3), ha="center", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    ax.set_ylim(min(0.45, min(auroc) - 0.02), max(auroc) + 0.05)
    ax.set_ylabel("within-problem AUROC (out of fold)")
    ax.set_title(f"LatentEBM states by cross-validation\n(chosen: {features['source']})", fontsize=9)
    fig.tight_layout()
    return fig
