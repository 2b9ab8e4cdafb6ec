"""Group mining for EBM training: mixed groups only, leakage guard, stats, hard negatives."""

import numpy as np
import pandas as pd
import pytest

from impetus.learned.mining import LeakageError, group_stats, hard_negative_mask, mine_groups


def graded():
    rows = [
        ("mixed", 1, True, 0.1), ("mixed", 0, False, 0.5), ("mixed", 2, False, 0.0), ("mixed", 3, True, 0.3),
        ("right", 0, True, 0.0), ("right", 1, True, 0.0),
        ("wrong", 0, False, 0.0), ("wrong", 1, False, 0.0), ("wrong", 2, False, 0.0),
        ("m2", 0, True, np.nan), ("m2", 1, False, 1.0),
    ]
    return pd.DataFrame(rows, columns=["problem_id", "sample_idx", "correct", "e"])


def test_mine_groups_keeps_only_mixed_problems_all_candidates():
    g = mine_groups(graded())
    assert sorted(g["problem_id"].unique()) == ["m2", "mixed"]
    assert len(g) == 6
    assert list(g[g.problem_id == "mixed"]["sample_idx"]) == [0, 1, 2, 3]  # sorted, fresh index
    assert list(g.index) == list(range(6))


def test_leakage_guard_names_ids():
    with pytest.raises(LeakageError) as err:
        mine_groups(graded(), eval_ids={"wrong", "right", "not-there"})
    assert err.value.ids == ["right", "wrong"]
    assert "right" in str(err.value) and "wrong" in str(err.value) and "not-there" not in str(err.value)
    assert len(mine_groups(graded(), eval_ids={"other"})) == 6
    assert issubclass(LeakageError, ValueError)


def test_group_stats():
    s = group_stats(graded())
    assert s == {
        "n_groups": 2, "n_pos": 3, "n_neg": 3, "pos_share": 0.5,
        "n_problems_all_right": 1, "n_problems_all_wrong": 1,
    }
    s2 = group_stats(mine_groups(graded()))
    assert s2["n_groups"] == 2 and s2["n_problems_all_right"] == 0 and s2["n_problems_all_wrong"] == 0


def test_hard_negative_mask():
    g = mine_groups(graded())
    m = hard_negative_mask(g, "e")
    hard = set(map(tuple, g.loc[m, ["problem_id", "sample_idx"]].values.tolist()))
    # mixed: right energies 0.1, 0.3 -> median 0.2; wrong 0.0 is hard, wrong 0.5 is not.
    # m2: the only right energy is NaN -> no median -> nothing is hard.
    assert hard == {("mixed", 2)}
    assert m.dtype == bool and (m.index == g.index).all()
