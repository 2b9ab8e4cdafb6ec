"""The compute-matched choice: chosen on dev within the budget, never on eval; V1 options equal the
prefix rule; every option is judged on the problems all share."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from impetus.selection.budget import prefix_accuracy
from impetus.selection.compute_match import Option, choose, compute_matched, ebd_options, shared, v1_options, v2_options
from impetus.selection.report import build_methods


def _opt(family, name, dev_acc, dev_tok, eval_acc, eval_tok, n=10, dev=True):
    ids = [f"p{i}" for i in range(n)]
    k = lambda acc: pd.Series([1.0] * round(acc * n) + [0.0] * (n - round(acc * n)), index=ids)
    t = lambda tok: pd.Series(float(tok), index=ids)
    return Option(family, name, k(eval_acc), t(eval_tok), k(dev_acc) if dev else None, t(dev_tok) if dev else None)


def test_choice_is_the_best_dev_accuracy_that_fits_and_never_reads_eval():
    opts = [_opt("v1", "a@1", 0.3, 10, 0.3, 10), _opt("v1", "a@2", 0.5, 20, 0.2, 20),
            _opt("ebd", "e@3 steps", 0.4, 15, 0.9, 15),   # best on eval, not on dev
            _opt("ebd", "e@9 steps", 0.8, 90, 0.1, 90),
            _opt("v2", "v", 0.0, 5, 1.0, 5, dev=False)]  # perfect on eval, never measured on dev
    assert choose(opts, 20).name == "a@2"
    assert choose(opts, 89).name == "a@2" and choose(opts, 90).name == "e@9 steps"
    assert choose(opts, 9) is None
    tie = [_opt("v1", "b@2", 0.5, 20, 0.5, 20), _opt("v1", "b@1", 0.5, 12, 0.5, 12)]
    assert choose(tie, 100).name == "b@1"  # a tie goes to fewer tokens


def test_headline_is_matched_at_the_largest_n_that_fits():
    opts = [_opt("v1", f"h@{n}", 0.1 * n, 10 * n, 0.1 * n, 10 * n) for n in (1, 2, 3)]
    opts.append(_opt("ebd", "e@2 steps", 0.9, 25, 0.6, 25))
    result = compute_matched(opts, budgets=[1, 2.5, 10], headline="h", n_boot=200, seed=0)
    b1, b25, b10 = result["budgets"]
    assert result["unit_tokens"] == 10
    assert b1["chosen"]["name"] == "h@1" and b1["v1_headline"]["name"] == "h@1" and b1["vs_headline"]["mean_diff"] == 0
    assert b25["chosen"]["name"] == "e@2 steps" and b25["v1_headline"]["name"] == "h@2"
    assert b25["vs_headline"]["mean_diff"] == pytest.approx(0.6 - 0.2)
    assert b10["v1_headline"]["name"] == "h@3"


def test_by_default_a_best_dev_option_replaces_the_headline_only_when_its_dev_ci_is_above_zero():
    opts = [_opt("v1", "h@1", 0.4, 10, 0.5, 10, n=20), _opt("v1", "h@2", 0.5, 20, 0.5, 20, n=20),
            _opt("ebd", "lucky@1 steps", 0.6, 20, 0.1, 20, n=20),      # ahead on dev by 2 of 20: not shown
            _opt("ebd", "strong@1 steps", 1.0, 40, 0.9, 40, n=20)]     # ahead by 10 of 20
    res = compute_matched(opts, budgets=[2, 4], headline="h", n_boot=500, seed=0)
    (b2, b4) = res["budgets"]
    assert b2["best_dev"]["name"] == "lucky@1 steps" and b2["best_dev_vs_headline_on_dev"]["lo"] <= 0
    assert b2["chosen"]["name"] == "h@2" and b2["vs_headline"]["mean_diff"] == 0
    assert b4["chosen"]["name"] == "strong@1 steps" and b4["best_dev_vs_headline_on_dev"]["lo"] > 0
    raw = compute_matched(opts, budgets=[2], headline="h", n_boot=500, seed=0, rule="best_dev")
    assert raw["budgets"][0]["chosen"]["name"] == "lucky@1 steps"


def test_options_are_judged_on_the_problems_all_share():
    a = _opt("v1", "h@1", 0.5, 10, 0.5, 10, n=10)
    b = _opt("ebd", "e@1 steps", 1.0, 20, 1.0, 20, n=4)  # the first 4 problems only
    sa, sb = shared([a, b])
    assert list(sa.eval_correct.index) == ["p0", "p1", "p2", "p3"] and sa.eval_correct.mean() == 1.0
    assert list(sb.dev_correct.index) == list(sa.dev_correct.index)


def test_v1_options_are_the_prefix_rule_on_each_split():
    rng = np.random.default_rng(0)
    rows = [{"problem_id": f"p{i}", "sample_idx": j, "answer": str(rng.integers(3)), "correct": False,
             "n_tokens": int(rng.integers(5, 15)), "neg_logprob_mean": float(rng.normal())}
            for i in range(6) for j in range(4)]
    table = pd.DataFrame(rows)
    table["correct"] = table["answer"] == "1"
    methods = build_methods(["neg_logprob_mean"], {})
    opts = v1_options(table, table, methods, ["majority"])
    assert [o.name for o in opts] == [f"majority@{n}" for n in range(1, 5)]
    for n, o in enumerate(opts, start=1):
        want = prefix_accuracy(table, methods["majority"], n).astype(float)
        pd.testing.assert_series_equal(o.eval_correct.sort_index(), want.sort_index(), check_names=False)
        assert o.eval_tokens.mean() == table[table.sample_idx < n].groupby("problem_id")["n_tokens"].sum().mean()


def test_ebd_options_pair_each_step_with_its_dev_run():
    rows = [{"split": s, "problem_id": f"p{i}", "method": "ebd_vote", "step": k, "correct": (i + k) % 2 == 0,
             "tokens": 100 + 10 * k} for s in ("eval", "dev") for i in range(3) for k in range(3)]
    opts = ebd_options(pd.DataFrame(rows))
    assert [o.name for o in opts] == ["ebd_vote@0 steps", "ebd_vote@1 steps", "ebd_vote@2 steps"]
    assert opts[1].dev_tokens.mean() == 110 and opts[1].eval_correct.tolist() == [0.0, 1.0, 0.0]
    no_dev = ebd_options(pd.DataFrame([r for r in rows if r["split"] == "eval"]))
    assert all(o.dev_correct is None for o in no_dev)
    with pytest.raises(ValueError, match="no option was measured on dev"):
        compute_matched(no_dev, [1], "h", 100, 0)


def test_v2_options_take_dev_answers_where_the_grid_ran_them():
    ev = pd.DataFrame({"problem_id": ["p0", "p1"] * 2, "method": ["v2_a_single"] * 2 + ["v2_a_v1"] * 2,
                       "correct": [True, False, True, True], "tokens": [50, 60, 400, 410]})
    dev = pd.DataFrame({"problem_id": ["p2", "p3"], "method": ["v2_a_single"] * 2, "correct": [False, True],
                        "tokens": [70, 90]})
    opts = {o.name: o for o in v2_options(ev, dev)}
    assert opts["v2_a_single"].dev_correct.tolist() == [0.0, 1.0] and opts["v2_a_single"].dev_tokens.mean() == 80
    assert opts["v2_a_v1"].dev_correct is None and opts["v2_a_v1"].eval_tokens.mean() == 405
    assert all(o.dev_correct is None for o in v2_options(ev))
