"""Grading candidate tables: missing answers after parquet round trips, truncation, summary."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from impetus.benchmarks import get_benchmark
from impetus.benchmarks.base import as_text, is_missing
from impetus.benchmarks.grading import grade_candidates, grading_summary, truncated_mask

MISSING = [None, float("nan"), np.nan, pd.NA, pd.NaT]


def _round_trip(df: pd.DataFrame, tmp_path, name: str) -> pd.DataFrame:
    path = tmp_path / f"{name}.parquet"
    df.to_parquet(path, index=False)
    return pd.read_parquet(path)


@pytest.fixture()
def arith_case(tmp_path):
    bench = get_benchmark("arith", n_problems=2, seed=0)
    problems = bench.load("generated").query("split == 'test'").reset_index(drop=True)
    g0, g1 = problems["gold"].tolist()
    a0 = problems["question"][0][len("What is "):-1].split()[0]  # an operand, as a cut-off answer
    cands = pd.DataFrame({
        "problem_id": [problems["problem_id"][0]] * 3 + [problems["problem_id"][1]] * 3,
        "sample_idx": [0, 1, 2] * 2,
        "completion": [f" The answer is {g0}.", " I do not know.", f" {a0} +",
                       f" = {g1}.0", "", f" The answer is {int(g1) + 1}."],
        "finish_reason": ["stop", "stop", "length", "stop", "eos", "length"],
    })
    return bench, problems, _round_trip(cands, tmp_path, "candidates"), (g0, g1, a0)


def test_mixed_answers_after_parquet_round_trip(arith_case, tmp_path):
    bench, problems, cands, (g0, g1, a0) = arith_case
    graded = grade_candidates(bench, cands, problems)
    assert graded["answer"].tolist() == [g0, None, str(int(a0)), g1, None, str(int(g1) + 1)]
    assert graded["correct"].tolist() == [True, False, False, True, False, False]
    assert graded["truncated"].tolist() == [False, False, True, False, False, True]
    assert graded["answer_start"].isna().tolist() == [False, True, False, False, True, False]

    # The graded table itself survives a round trip (answers come back as NaN) and regrading,
    # grading its answers directly, and the summary all still work.
    back = _round_trip(graded, tmp_path, "graded")
    assert back["answer"].isna().tolist() == [False, True, False, False, True, False]
    regraded = grade_candidates(bench, back, problems)
    assert regraded["correct"].tolist() == graded["correct"].tolist()
    gold = dict(zip(problems["problem_id"], problems["gold"]))
    direct = [bench.grade(a, gold[p]) for a, p in zip(back["answer"], back["problem_id"])]
    assert direct == [True, False, False, True, False, False]
    assert [bench.canonical(a) for a in back["answer"]] == graded["answer"].tolist()
    s = grading_summary(back)
    assert (s["n_no_answer"], s["n_truncated"], s["n_candidates"], s["n_problems"]) == (2, 2, 6, 2)
    assert s["no_answer_share"] == pytest.approx(2 / 6) and s["truncated_share"] == pytest.approx(2 / 6)
    assert s["sample_accuracy"] == pytest.approx(2 / 6) and s["pass_at_n"] == 1.0
    assert s["first_sample_accuracy"] == 1.0


def test_gsm8k_style_grading_with_missing_completion(tmp_path):
    bench = get_benchmark("gsm8k")
    problems = pd.DataFrame({"problem_id": ["a", "b"], "question": ["q1", "q2"], "gold": ["72", "5"],
                             "meta": ["{}", "{}"], "choices": [None, None]})
    cands = pd.DataFrame({"problem_id": ["a", "a", "b", "b"], "sample_idx": [0, 1, 0, 1],
                          "completion": ["#### 72", None, "so 5 apples", "nothing"],
                          "finish_reason": ["stop", None, "length", "eos"]})
    graded = grade_candidates(bench, _round_trip(cands, tmp_path, "c"), problems)
    assert graded["answer"].tolist() == ["72", None, "5", None]
    assert graded["correct"].tolist() == [True, False, True, False]
    assert graded["truncated"].tolist() == [False, False, True, False]
    s = grading_summary(graded)
    assert (s["n_no_answer"], s["n_truncated"], s["truncated_share"]) == (2, 1, 0.25)


@pytest.mark.parametrize("name, gold, good", [
    ("arith", "12", "12"), ("gsm8k", "72", "72.0"), ("svamp", "5", "5"), ("arc_challenge", "B", "(B)"),
    ("bbh", "(A)", "A"), ("bbh", "True", "true"), ("math500", "\\frac{1}{2}", "\\frac{1}{2}"),
])
@pytest.mark.parametrize("missing", MISSING, ids=repr)
def test_every_benchmark_treats_nan_like_none(name, gold, good, missing):
    b = get_benchmark(name)
    assert b.grade(missing, gold) is False
    assert b.grade(good, missing) is False
    assert b.grade(good, gold) is True
    assert b.canonical(missing) is None
    assert b.extract(missing) is None
    assert b.extract_span(missing) is None


def test_missing_helpers():
    assert all(is_missing(m) for m in MISSING)
    assert not any(is_missing(v) for v in ("", "nan", 0, 0.0, ["x"], np.array([np.nan])))
    assert as_text(np.nan) is None and as_text(72) == "72" and as_text("") == ""
    assert math.isnan(float("nan"))  # the literal the parametrised test relies on


def test_truncated_mask_sources():
    df = pd.DataFrame({"finish_reason": ["length", "stop", None]})
    assert truncated_mask(df).tolist() == [True, False, False]
    assert truncated_mask(df.assign(truncated=[False, True, None])).tolist() == [False, True, False]
    assert truncated_mask(pd.DataFrame({"x": [1, 2]})).tolist() == [False, False]


def test_answer_locator_finds_the_span_grading_reads(arith_case):
    from impetus.benchmarks.grading import answer_locator

    bench, problems, cands, _ = arith_case
    graded = grade_candidates(bench, cands, problems)
    locate = answer_locator(bench, problems)
    for row in graded.itertuples(index=False):
        span = locate(row.problem_id, as_text(row.completion))
        want = None if pd.isna(row.answer_start) else (int(row.answer_start), int(row.answer_end))
        assert span == want
    assert sum(s is not None for s in (locate(r.problem_id, as_text(r.completion)) for r in graded.itertuples())) >= 3
