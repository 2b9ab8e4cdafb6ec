"""Selection rules on hand-made tables where the right choice is known."""

import numpy as np
import pandas as pd
import pytest

from impetus.selection.rules import (
    METHODS,
    get_selector,
    oracle,
    select_argmin,
    select_first,
    select_majority,
    select_weighted_vote,
    selection_correct,
)


def frame(rows):
    return pd.DataFrame(rows, columns=["problem_id", "sample_idx", "answer", "correct", "e"])


def test_argmin_ties_go_to_lowest_sample_and_nan_ranks_last():
    df = frame([
        ("p", 2, "a", False, 1.0),
        ("p", 1, "b", True, 1.0),  # tie with sample 2 -> sample 1 wins
        ("p", 0, "c", False, np.nan),  # NaN never wins over a finite energy
        ("q", 0, "x", False, np.nan),
        ("q", 1, "y", True, np.nan),  # all NaN -> lowest sample_idx
    ])
    sel = select_argmin(df, "e")
    assert sel.to_dict() == {"p": 1, "q": 0}
    assert sel.index.name == "problem_id" and sel.name == "sample_idx"


def test_first_and_oracle():
    df = frame([("p", 1, "a", True, 0.0), ("p", 0, "b", False, 1.0), ("q", 0, "a", False, 0.0), ("q", 1, "b", False, 0.0)])
    assert select_first(df).to_dict() == {"p": 0, "q": 0}
    assert oracle(df).to_dict() == {"p": 1, "q": 0}
    assert selection_correct(df, oracle(df)).to_dict() == {"p": True, "q": False}


def test_majority_tie_first_occurrence_and_none_handling():
    df = frame([
        # p: "7" and "8" both twice -> "8" occurs first (sample 0)
        ("p", 0, "8", False, 0.0), ("p", 1, "7", True, 0.0), ("p", 2, "7", True, 0.0), ("p", 3, "8", False, 0.0),
        # q: None twice does not beat "5" once
        ("q", 0, None, False, 0.0), ("q", 1, None, False, 0.0), ("q", 2, "5", True, 0.0),
        # r: all None -> first sample
        ("r", 0, None, False, 0.0), ("r", 1, None, False, 0.0),
    ])
    assert select_majority(df).to_dict() == {"p": 0, "q": 2, "r": 0}


def test_weighted_vote_beats_majority_on_crafted_case():
    # Wrong answer "1" is the majority but high-energy; the right answer "2" has two very
    # confident (low-energy) candidates.
    df = frame([
        ("p", 0, "1", False, 5.0), ("p", 1, "1", False, 5.0), ("p", 2, "1", False, 5.0),
        ("p", 3, "2", True, 0.5), ("p", 4, "2", True, 0.0),
    ])
    maj = selection_correct(df, select_majority(df))
    for norm in ("zscore", "shift"):
        sel = select_weighted_vote(df, "e", tau=0.5, normalize=norm)
        assert sel["p"] == 4  # lowest-energy sample carrying the winning answer
        assert selection_correct(df, sel)["p"] and not maj["p"]
    # Huge tau -> uniform weights -> plain majority.
    assert select_weighted_vote(df, "e", tau=1e6)["p"] == 0


def test_weighted_vote_all_none_falls_back_to_argmin():
    df = frame([("p", 0, None, False, 3.0), ("p", 1, None, False, 1.0)])
    assert select_weighted_vote(df, "e")["p"] == 1
    with pytest.raises(ValueError):
        select_weighted_vote(df, "e", tau=0)


def test_registry():
    df = frame([("p", 0, "a", False, 2.0), ("p", 1, "b", True, 1.0)])
    assert set(METHODS) >= {"first", "majority", "argmin", "weighted_vote", "oracle"}
    sel = get_selector("argmin", energy_col="e")
    assert sel(df)["p"] == 1 and sel.keywords["energy_col"] == "e"
    with pytest.raises(KeyError):
        get_selector("nope")


def test_selection_correct_unknown_sample_raises():
    df = frame([("p", 0, "a", True, 0.0)])
    with pytest.raises(KeyError):
        selection_correct(df, pd.Series({"p": 5}))


def test_weighted_vote_exact_tie_goes_to_first_answer():
    # "b" (samples 0, 3) and "a" (samples 1, 2) have the same multiset of energies -> equal scores,
    # summed in different orders; "b" occurs first.
    df = frame([("p", 0, "b", False, 0.1), ("p", 1, "a", True, 0.7), ("p", 2, "a", True, 0.1), ("p", 3, "b", False, 0.7)])
    assert select_weighted_vote(df, "e", tau=0.3)["p"] == 0


def test_majority_index_over_a_list_follows_select_majority():
    from impetus.selection.rules import majority_index

    assert majority_index(["3", None, "5", "5", "3"]) == 0  # 2-2 tie: the answer seen first
    assert majority_index([None, "7", "8", "8"]) == 2  # first occurrence of the majority
    assert majority_index([None, None]) == 0 and majority_index([]) == 0


def test_vote_winners_weighted_and_counted():
    from impetus.selection.rules import vote_winners

    d = pd.DataFrame({"problem_id": ["a"] * 4 + ["b"] * 2, "sample_idx": [0, 1, 2, 3, 0, 1],
                      "answer": ["1", "2", "2", None, None, None]})
    counted = vote_winners(d)
    assert counted.set_index("problem_id")["_ans"].to_dict() == {"a": "2"}  # b has no answer
    weighted = vote_winners(d, np.array([5.0, 1.0, 1.0, 9.0, 1.0, 1.0]))
    assert weighted.set_index("problem_id")["_ans"].to_dict() == {"a": "1"}  # 5 > 1 + 1; None never votes
