"""Orders of multiple-choice answers: permuted prompts and answers mapped back (sampling: tests/lm/test_orders.py)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from impetus.benchmarks import get_benchmark
from impetus.benchmarks.grading import build_prompt_table, grade_candidates, one_prompt_per_problem


def _problems(k: int = 4) -> pd.DataFrame:
    rows = []
    for i in range(k):
        rows.append({"problem_id": f"arc_easy-q{i}", "benchmark": "arc_easy", "split": "test",
                     "question": f"Which one is number {i}?", "choices": [f"thing {j}" for j in range(4)],
                     "gold": "ABCD"[i % 4], "meta": json.dumps({"labels": ["A", "B", "C", "D"]})})
    return pd.DataFrame(rows)


def test_permuted_rows_keep_the_right_choice_right():
    b = get_benchmark("arc_easy")
    row = _problems().iloc[1].to_dict()
    assert b.choice_order(row, 0) == [0, 1, 2, 3]
    seen = {tuple(b.choice_order(row, o)) for o in range(1, 6)}
    assert len(seen) > 1 and all(sorted(p) == [0, 1, 2, 3] for p in seen)
    assert b.choice_order(row, 3) == b.choice_order(dict(row), 3)  # from (problem id, order) alone
    for order in range(5):
        shown = b.permuted(row, order)
        # The displayed gold label points at the same choice text as the source's gold.
        assert shown["choices"]["ABCD".index(shown["gold"])] == row["choices"]["ABCD".index(row["gold"])]
        for label in "ABCD":
            back = b.original_answer(label, row, order)
            assert shown["choices"]["ABCD".index(label)] == row["choices"]["ABCD".index(back)]
    with pytest.raises(ValueError, match="choice_orders must be 1"):
        get_benchmark("svamp").permuted({"problem_id": "s", "question": "q", "gold": "1"}, 1)


def test_prompt_table_has_one_row_per_order_and_grading_maps_answers_back():
    b = get_benchmark("arc_easy")
    problems = _problems()
    table = build_prompt_table(b, problems, _problems(2).assign(problem_id=["s0", "s1"]), "fewshot", None, 3)
    assert table["problem_id"].tolist() == [p for p in problems["problem_id"] for _ in range(3)]
    assert table["order"].tolist() == [0, 1, 2] * 4
    base = build_prompt_table(b, problems, _problems(2).assign(problem_id=["s0", "s1"]), "fewshot", None, 1)
    assert "order" not in base.columns
    assert table[table["order"] == 0]["prompt"].tolist() == base["prompt"].tolist()
    # A candidate naming the right choice's displayed label is right whatever order it saw.
    rows = []
    for _, r in table.iterrows():
        row = problems.set_index("problem_id").loc[r["problem_id"]].to_dict() | {"problem_id": r["problem_id"]}
        shown = b.permuted(row, int(r["order"]))
        assert f"({shown['gold']}) {row['choices']['ABCD'.index(row['gold'])]}" in r["prompt"]
        rows.append({"problem_id": r["problem_id"], "sample_idx": len(rows), "order": int(r["order"]),
                     "completion": f" So the answer is ({shown['gold']}).", "finish_reason": "stop"})
    graded = grade_candidates(b, pd.DataFrame(rows), problems)
    assert graded["correct"].all()
    assert graded["answer"].tolist() == [problems.set_index("problem_id").loc[p, "gold"] for p in graded["problem_id"]]
    with pytest.raises(ValueError, match="choice_orders=1"):
        one_prompt_per_problem(table, "ebd")
    assert one_prompt_per_problem(base, "ebd") is base
