"""Evaluation maths: bootstrap, paired test, gap closure, accuracy-vs-N, AUROC, evaluate_methods."""

import numpy as np
import pandas as pd
import pytest

from impetus.selection.metrics import (
    accuracy_vs_n,
    auroc,
    bootstrap_ci,
    evaluate_methods,
    gap_closure,
    paired_bootstrap,
)
from impetus.selection.rules import get_selector, select_argmin, select_first, selection_correct


def synthetic(n_problems=60, n=8, seed=0):
    """Candidates whose energy is informative: right ones have lower energy on average."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_problems):
        gold = "g"
        for s in range(n):
            ok = rng.random() < 0.4
            ans = gold if ok else str(rng.integers(0, 3))
            rows.append((p, s, ans, ok, rng.normal(-1.0 if ok else 0.0, 1.0)))
    return pd.DataFrame(rows, columns=["problem_id", "sample_idx", "answer", "correct", "e"])


def test_bootstrap_ci_contains_point_and_shrinks():
    rng = np.random.default_rng(1)
    small = rng.random(50) < 0.6
    big = rng.random(2000) < 0.6
    lo, hi = bootstrap_ci(small, seed=0)
    assert lo <= small.mean() <= hi
    lo2, hi2 = bootstrap_ci(big, seed=0)
    assert lo2 <= big.mean() <= hi2
    assert (hi2 - lo2) < (hi - lo) / 3
    assert bootstrap_ci(small, seed=3) == bootstrap_ci(small, seed=3)


def test_paired_bootstrap():
    a = np.random.default_rng(0).random(100) < 0.5
    r = paired_bootstrap(a, a)
    assert r["mean_diff"] == 0 and r["lo"] == 0 and r["hi"] == 0 and r["p_value"] == 1.0
    b = np.zeros(100, bool)
    c = np.ones(100, bool)
    r = paired_bootstrap(c, b)
    assert r["mean_diff"] == 1.0 and r["lo"] == 1.0 and r["p_value"] == 0.0
    with pytest.raises(ValueError):
        paired_bootstrap(a, a[:10])


def test_gap_closure_edges():
    assert gap_closure(0.5, 0.6, 0.6) is None
    assert gap_closure(0.8, 0.6, 0.8) == 1.0
    assert gap_closure(0.6, 0.6, 0.8) == 0.0
    assert gap_closure(0.7, 0.6, 0.8) == pytest.approx(0.5)


def test_auroc():
    y = np.array([1, 1, 0, 0], bool)
    assert auroc(y, [0.0, 0.1, 1.0, 2.0]) == 1.0  # lower energy = right
    assert auroc(y, [2.0, 1.0, 0.1, 0.0]) == 0.0
    assert auroc([True, True], [0.0, 1.0]) is None
    assert auroc(y, [0.0, np.nan, 1.0, 2.0]) == 1.0


def test_accuracy_vs_n_endpoints():
    df = synthetic()
    sel = get_selector("argmin", energy_col="e")
    curve = accuracy_vs_n(df, sel, n_subsamples=30, seed=0)
    assert list(curve["n"]) == [1, 2, 4, 8]
    full = selection_correct(df, select_argmin(df, "e")).mean()
    assert curve.iloc[-1]["accuracy"] == pytest.approx(full) and curve.iloc[-1]["std"] == 0
    per_sample = df["correct"].mean()
    assert curve.iloc[0]["accuracy"] == pytest.approx(per_sample, abs=0.05)
    # An informative energy improves with N.
    assert curve.iloc[-1]["accuracy"] > curve.iloc[0]["accuracy"] + 0.1
    again = accuracy_vs_n(df, sel, n_subsamples=30, seed=0)
    pd.testing.assert_frame_equal(curve, again)
    assert list(accuracy_vs_n(df, select_first, ns=[3, 1], n_subsamples=2)["n"]) == [1, 3]


def test_accuracy_vs_n_stacked_draws_equal_one_call_per_draw():
    """The draws of one n run as one stacked selector call; each draw must give what calling the
    selector on that draw alone gives (same random keys: one rng.random(len(df)) per draw)."""
    df = synthetic(n_problems=25, n=6, seed=3)
    df["problem_id"] = "p" + df["problem_id"].astype(str)  # string ids, as the pipeline's
    df = df.drop(index=[3, 4, 5, 40])  # problems with fewer candidates than others keep all they have
    methods = [get_selector("weighted_vote", energy_col="e", tau=0.5), get_selector("majority"),
               get_selector("argmin", energy_col="e")]
    for sel in methods:
        rng = np.random.default_rng(7)
        expected = []
        for n in (1, 2, 4):
            accs = []
            for _ in range(5):
                rank = pd.Series(rng.random(len(df)), index=df.index).groupby(df["problem_id"]).rank(method="first")
                sub = df[rank <= n]
                accs.append(float(selection_correct(sub, sel(sub)).mean()))
            expected.append((n, float(np.mean(accs)), float(np.std(accs))))
        curve = accuracy_vs_n(df, sel, ns=[1, 2, 4], n_subsamples=5, seed=7)
        assert list(curve.itertuples(index=False, name=None)) == expected


def test_evaluate_methods():
    df = synthetic()
    methods = {
        "e": get_selector("argmin", energy_col="e"),
        "vote_e": get_selector("weighted_vote", energy_col="e", tau=1.0),
        "first": select_first,
    }
    res = evaluate_methods(df, methods, n_boot=300, seed=0)
    assert res["n_problems"] == 60 and res["n_candidates"] == 8 and res["n_rows"] == 480
    assert res["oracle"] >= res["majority"]
    m = res["methods"]["e"]
    lo, hi = m["ci"]
    assert lo <= m["accuracy"] <= hi
    assert m["gain_vs_single"] == pytest.approx(m["accuracy"] - res["single"])
    assert m["gain_vs_single_ci"][0] <= m["gain_vs_single"] <= m["gain_vs_single_ci"][1]
    assert m["auroc"] > 0.6 and res["methods"]["vote_e"]["auroc"] == m["auroc"]
    f = res["methods"]["first"]
    assert f["auroc"] is None and f["gain_vs_single"] == 0.0
    assert 0.5 < m["auroc_within"] <= 1.0 and f["auroc_within"] is None
