"""Equal-token comparison: V1 is matched on each problem's first n candidates."""

import pandas as pd
import pytest

from impetus.selection.budget import V1Reference, compare_at_equal_tokens, prefix_accuracy, v1_budget_curve, v1_reference
from impetus.selection.rules import select_first, select_majority


@pytest.fixture()
def v1() -> pd.DataFrame:
    # Two problems, 4 candidates of 10 tokens; the right answer "1" wins the majority only with >= 3.
    rows = []
    for pid in ("a", "b"):
        for i, ans in enumerate(["2", "1", "1", "3"]):
            rows.append({"problem_id": pid, "sample_idx": i, "answer": ans, "correct": ans == "1", "n_tokens": 10})
    return pd.DataFrame(rows)


def test_prefix_accuracy_and_budget_curve(v1):
    assert v1_budget_curve(v1).tolist() == [10.0, 20.0, 30.0, 40.0]
    assert not prefix_accuracy(v1, select_majority, 1).any()  # only "2"
    assert prefix_accuracy(v1, select_majority, 3).all()  # "1" twice


def test_new_method_is_matched_at_its_token_budget(v1):
    new = pd.DataFrame({"problem_id": ["a", "b"], "method": "x", "correct": [True, False], "tokens": [25.0, 25.0],
                        "seconds": [1.0, 1.0]})
    methods = {"majority": select_majority, "first": select_first}
    r = compare_at_equal_tokens(new, V1Reference(v1, methods, "majority"), ["majority"], "v2", lambda g: {"k": len(g)},
                                n_boot=200, seed=0, at_full_n=True)
    assert r["methods"]["x"]["accuracy"] == 0.5 and r["methods"]["x"]["k"] == 2
    assert r["methods"]["majority@3"]["n"] == 3 and r["methods"]["majority@3"]["accuracy"] == 1.0  # 30 >= 25 tokens
    assert r["methods"]["majority"]["n"] == 4
    assert r["comparisons"]["x vs majority@3"]["diff"] == pytest.approx(-0.5)


def test_v1_reference_builds_the_dev_chosen_methods(v1):
    table = v1.assign(hybrid=[0.1, 0.2, 0.3, 0.4] * 2, neg_logprob_mean=0.0)
    ref = v1_reference(table, {"headline": {"method": "vote_hybrid"}, "taus": {"hybrid": 0.5}}, vote_for=["neg_logprob_mean"])
    assert {"first", "majority", "hybrid", "vote_hybrid", "neg_logprob_mean", "vote_neg_logprob_mean", "oracle"} <= set(ref.methods)
    assert "vote_majority" not in ref.methods and ref.headline == "vote_hybrid"
    assert ref.resolve(["hybrid", "headline", "vote_hybrid"]) == ["hybrid", "vote_hybrid"]
    assert prefix_accuracy(table, ref.methods["hybrid"], 4).eq(False).all()  # argmin picks sample 0, answer "2"


def test_over_budget_note_names_methods_beyond_v1s_n():
    from impetus.selection.budget import over_budget_note

    result = {"v1_tokens_by_n": {1: 20.0, 2: 41.0},
              "methods": {"ebd_lowest": {"family": "ebd", "tokens_per_problem": 60.0},
                          "ebd_vote": {"family": "ebd", "tokens_per_problem": 30.0},
                          "hybrid@2": {"family": "v1", "tokens_per_problem": 41.0}}}
    note = over_budget_note(result, ["ebd"])
    assert "41 tokens" in note and "ebd_lowest" in note and "ebd_vote" not in note
    result["methods"]["ebd_lowest"]["tokens_per_problem"] = 41.0
    assert over_budget_note(result, ["ebd"]) == ""
