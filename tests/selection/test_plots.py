"""Plots return Figures with the expected lines/axes."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from impetus.selection.plots import plot_accuracy_vs_n, plot_energy_histograms, plot_roc


def _df():
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.5
    return pd.DataFrame({"correct": y, "a": rng.normal(size=200) - y, "b": rng.normal(size=200), "c": np.nan})


def test_accuracy_vs_n_plot():
    c = pd.DataFrame({"n": [1, 2, 4], "accuracy": [0.3, 0.4, 0.5], "std": [0.02, 0.01, 0.0]})
    fig = plot_accuracy_vs_n({"m1": c, "m2": c.assign(accuracy=c.accuracy - 0.1)}, oracle=c.assign(accuracy=[0.3, 0.6, 0.8]))
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 3
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()


def test_roc_plot():
    fig = plot_roc(_df(), ["a", "b", "c"])
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 3  # a, b, chance ("c" all-NaN skipped)
    assert "skipped: c" in ax.get_title()


def test_histograms_grid():
    fig = plot_energy_histograms(_df(), ["a", "b", "c", "a"], ncols=3)
    assert len(fig.axes) == 4
    assert fig.axes[0].get_title() == "a"
    # Panel "a": right and wrong candidates' densities over shared edges, as np.histogram gives them.
    df = _df()
    right, wrong = fig.axes[0].patches
    edges = np.histogram_bin_edges(df["a"], bins=30)
    for patch, rows in ((right, df[df["correct"]]), (wrong, df[~df["correct"]])):
        values, drawn_edges, _ = patch.get_data()
        np.testing.assert_allclose(drawn_edges, edges)
        np.testing.assert_allclose(values, np.histogram(rows["a"], bins=edges, density=True)[0])
        assert (np.diff(edges) * values).sum() == pytest.approx(1.0)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        f"right (n={df['correct'].sum()})", f"wrong (n={(~df['correct']).sum()})"]
    # The figure's title sits above the first row's panel titles, not on them (the report's 19
    # energies: 7 rows, where tight_layout alone put it on the middle panel's title).
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    tall = plot_energy_histograms(df, ["a"] * 19, ncols=3)
    renderer = FigureCanvasAgg(tall).get_renderer()
    top = tall._suptitle.get_window_extent(renderer)
    assert not any(top.overlaps(ax.title.get_window_extent(renderer)) for ax in tall.axes[:3])
