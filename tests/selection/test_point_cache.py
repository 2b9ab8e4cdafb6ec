"""The learning curve's point cache: content keys that change with the data, atomic JSON points."""

import json

import numpy as np
import pandas as pd

from impetus.selection.point_cache import PointCache, code_digest, content_digest


def _frame(x: float = 0.5) -> pd.DataFrame:
    return pd.DataFrame({
        "problem_id": pd.array(["a", "b"], dtype="string"), "correct": [True, False], "x": [x, 1.0],
        "n": pd.array([1, None], dtype="Int64"), "rec": [np.arange(3, dtype=np.float32), np.ones(2, np.float32)],
    })


def test_content_digest_follows_every_kind_of_content():
    hidden = {"problem_id": np.array(["a", "b"], dtype=object), "h": np.zeros((2, 3), np.float32)}
    base = content_digest([_frame(), hidden, {"lr": 0.1}, 3])
    assert base == content_digest([_frame(), dict(hidden), {"lr": 0.1}, 3])  # same content, same key
    moved_array = _frame()
    moved_array.at[0, "rec"] = np.array([0, 1, 2.5], np.float32)
    others = [
        [_frame(0.25), hidden, {"lr": 0.1}, 3],                                   # a number in a column
        [moved_array, hidden, {"lr": 0.1}, 3],                                     # a recorded per-row array
        [_frame(), {**hidden, "h": np.ones((2, 3), np.float32)}, {"lr": 0.1}, 3],  # a hidden state
        [_frame(), hidden, {"lr": 0.2}, 3],                                        # a setting
        [_frame(), hidden, {"lr": 0.1}, 4],                                        # the point
    ]
    assert len({base, *(content_digest(o) for o in others)}) == 1 + len(others)


def test_point_cache_computes_once_and_keeps_nothing_without_a_folder(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"n": 3, "acc": 0.5}

    cache = PointCache(str(tmp_path / "pts"), content_digest(["run"]))
    assert cache.get(3, compute) == {"n": 3, "acc": 0.5} and cache.get(3, compute) == {"n": 3, "acc": 0.5}
    assert len(calls) == 1 and cache.read == 1
    assert json.loads(next((tmp_path / "pts").glob("*.json")).read_text()) == {"n": 3, "acc": 0.5}
    assert PointCache(str(tmp_path / "pts"), content_digest(["other run"])).get(3, compute) and len(calls) == 2
    nothing = PointCache(None, "run")
    nothing.get(3, compute), nothing.get(3, compute)
    assert len(calls) == 4 and nothing.read == 0


def test_code_digest_is_stable_and_covers_the_sources():
    assert code_digest() == code_digest() and len(code_digest()) == 32


def test_a_table_comes_back_from_a_stored_point_as_it_went_in(tmp_path):
    """Dev runs are kept as tables (EBD's curves, V2's rows with their per-step traces): the stored
    point must give back the same values and dtypes, missing values and nested lists included."""
    from impetus.selection.point_cache import frame_from_json, frame_to_json

    df = pd.DataFrame({
        "problem_id": ["p1", "p10"], "step": np.array([0, 3], np.int64), "correct": [True, False],
        "accuracy": [0.5, np.nan], "answer": ["7", None], "window_start": np.array([2, 5], np.int32),
        "trace": [[{"step": 0, "energy": 1.5, "best_text": " 7."}], [{"step": 0, "energy": -0.25, "best_text": ""}]],
    })
    cache = PointCache(str(tmp_path), "runs")
    cache.get("run", lambda: frame_to_json(df))
    back = frame_from_json(PointCache(str(tmp_path), "runs").get("run", lambda: {}))
    pd.testing.assert_frame_equal(back, df, check_exact=True)


def test_content_digest_reads_nested_records_and_tensors():
    """A learned energy's record (config, members' weights as tensors) is part of a dev run's key:
    one changed weight, one changed setting or one more member gives another key."""
    import torch

    record = {"kind": "text_ebm", "config": {"d_model": 8}, "members": [{"w": torch.zeros(2, 3)}, {"w": torch.ones(2, 3)}]}
    base = content_digest([record])
    assert base == content_digest([{**record, "members": [{"w": torch.zeros(2, 3)}, {"w": torch.ones(2, 3)}]}])
    moved = {**record, "members": [{"w": torch.zeros(2, 3)}, {"w": torch.ones(2, 3) * (1 + 1e-6)}]}
    others = [moved, {**record, "config": {"d_model": 16}}, {**record, "members": record["members"] + [{"w": torch.ones(1)}]},
              {**record, "members": [{"w": torch.zeros(2, 3, dtype=torch.bfloat16)}, {"w": torch.ones(2, 3)}]}]
    assert len({base, *(content_digest([o]) for o in others)}) == 1 + len(others)
