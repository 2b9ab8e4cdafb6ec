"""lm-evaluation-harness's rules on scored choices, and the choice of baseline and method on train-side data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from impetus.energy.recorded import is_choices, loglik_energies
from impetus.selection.choices import BASELINES, choice_evaluation, choice_methods, choice_report, choice_selection


def _graded(lls: list[list[float]], texts: list[list[str]], gold: list[int]) -> pd.DataFrame:
    """Choice rows whose recorded values give the log-likelihoods ``lls`` (lse 0, so log p = tok_logit)."""
    rows = []
    for p, (ll, tx, g) in enumerate(zip(lls, texts, gold)):
        for j, (v, t) in enumerate(zip(ll, tx)):
            n = 2  # two tokens sharing the choice's log-likelihood
            rows.append({"problem_id": f"p{p}", "sample_idx": j, "completion": " " + t, "finish_reason": "choice",
                         "rec_tok_logit": np.full(n, v / n, np.float32), "rec_lse": np.zeros(n + 1, np.float32),
                         "answer_start": 1, "answer_end": 1 + len(t), "correct": j == g, "answer": "ABCD"[j],
                         "gen_seconds": 0.1})
    df = pd.DataFrame(rows)
    return pd.concat([df, loglik_energies(df)], axis=1)


def test_loglik_energies_are_lm_evals_sum_and_per_character_sum():
    df = _graded([[-3.0, -8.0]], [["ab", "abcdefgh"]], [0])
    assert is_choices(df)
    np.testing.assert_allclose(df["neg_loglik"], [3.0, 8.0], rtol=1e-6)
    np.testing.assert_allclose(df["neg_loglik_per_char"], [1.5, 1.0], rtol=1e-6)


def test_acc_and_acc_norm_pick_their_planted_choices():
    # acc prefers the short choice (higher summed log-prob), acc_norm the long one (higher per character).
    df = _graded([[-3.0, -8.0, -9.0]], [["ab", "abcdefgh", "xyz"]], [1])
    methods = choice_methods(["neg_loglik", "neg_loglik_per_char"])
    assert methods["loglik"](df).loc["p0"] == 0
    assert methods["loglik_norm"](df).loc["p0"] == 1
    assert set(methods) == {"loglik", "loglik_norm", "oracle"}


def _with_signal(n: int, rng: np.random.Generator, norm_better: bool) -> pd.DataFrame:
    """Problems where acc_norm is right more often than acc (or the other way round)."""
    lls, texts, gold = [], [], []
    for _ in range(n):
        g = int(rng.integers(0, 4))
        long = (g + 1) % 4 if not norm_better else g  # the long choice is right iff acc_norm should win
        tx = ["x" * (20 if j == long else 3) for j in range(4)]
        ll = [-2.0 * len(t) ** 0.5 + rng.normal(0, 0.01) for t in tx]  # acc_norm favours the long, acc a short one
        lls.append(ll)
        texts.append(tx)
        gold.append(g)
    return _graded(lls, texts, gold)


def test_baseline_is_chosen_on_train_side_problems_and_the_gain_measured_against_it():
    rng = np.random.default_rng(0)
    train = _with_signal(60, rng, norm_better=True)
    evals = _with_signal(40, rng, norm_better=False)  # on eval acc would have been the better baseline
    cols = ["neg_loglik", "neg_loglik_per_char"]
    fold_of = pd.Series(np.arange(60) % 3, index=pd.Index([f"p{i}" for i in range(60)], name="problem_id"))
    sel = choice_selection(train, fold_of, cols, costs={})
    assert sel["baseline"] == "loglik_norm" and sel["method"] == "loglik_norm"
    result, picks = choice_evaluation(evals, sel, cols, {}, [], n_boot=200, seed=0)
    assert result["baseline"] == "loglik_norm"  # never re-chosen on eval
    m = result["methods"]
    assert m["loglik"]["accuracy"] > m["loglik_norm"]["accuracy"]
    assert m["loglik"]["gain_vs_baseline"] == pytest.approx(m["loglik"]["accuracy"] - m["loglik_norm"]["accuracy"])
    assert result["baselines"] == {b: m[b]["accuracy"] for b in BASELINES}
    assert result["chance"] == pytest.approx(0.25) and m["oracle"]["accuracy"] == 1.0
    report = choice_report(result)
    assert "| loglik_norm ◀ headline" in report and "Left out on choices" in report


def test_a_choices_replication_row_is_held_to_the_chosen_lm_eval_baseline():
    from impetus.selection.matrix import markdown_matrix, matrix_row
    from impetus.selection.replication import aggregate, markdown_report

    rng = np.random.default_rng(1)
    train, evals = _with_signal(60, rng, norm_better=True), _with_signal(40, rng, norm_better=True)
    fold_of = pd.Series(np.arange(60) % 3, index=pd.Index([f"p{i}" for i in range(60)], name="problem_id"))
    sel = choice_selection(train, fold_of, ["neg_loglik", "neg_loglik_per_char"], costs={})
    result, _ = choice_evaluation(evals, sel, ["neg_loglik", "neg_loglik_per_char"], {}, [], n_boot=200, seed=0)
    rep = aggregate({0: result})
    row = matrix_row(rep, "arc_easy")
    assert row["single"] == result["methods"]["loglik_norm"]["accuracy"] and row["reference"] == "`loglik_norm`"
    assert row["gain"] == pytest.approx(result["headline"]["gain_vs_baseline"])
    assert row["loglik"] == result["baselines"]["loglik"] and row["majority"] is None
    assert "(`loglik_norm`)" in markdown_matrix([row]) and "over the lm-eval baseline" in markdown_report(rep)


def test_replication_and_matrix_name_the_states_cv_chose_for_the_latent_ebm():
    from impetus.selection.matrix import markdown_matrix, matrix_row
    from impetus.selection.replication import aggregate, markdown_report

    rng = np.random.default_rng(2)
    cols = ["neg_loglik", "neg_loglik_per_char"]
    per_seed = {}
    for seed, states in enumerate(["l15_both", "layer_both", "l15_both"]):
        train, evals = _with_signal(60, rng, norm_better=False), _with_signal(40, rng, norm_better=False)
        fold_of = pd.Series(np.arange(60) % 3, index=pd.Index([f"p{i}" for i in range(60)], name="problem_id"))
        result, _ = choice_evaluation(evals, choice_selection(train, fold_of, cols, costs={}), cols, {}, [], n_boot=50, seed=0)
        per_seed[seed] = result | {"latent_features": {"source": states, "cv": {states: {"auroc": 0.8, "top1": 0.6}}}}
    rep = aggregate(per_seed)
    assert rep["latent_states"] == {"l15_both": 2, "layer_both": 1}
    assert "`l15_both` (seed 0), `layer_both` (seed 1), `l15_both` (seed 2)" in markdown_report(rep)
    assert "LatentEBM on `l15_both` ×2, `layer_both` ×1" in markdown_matrix([matrix_row(rep, "arc_easy")])
