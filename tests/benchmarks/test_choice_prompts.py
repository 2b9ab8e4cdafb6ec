"""The contexts and choices scored when ``sampling.candidates: choices``: lm-evaluation-harness's ARC
prompt, exemplars as question + right choice, and the options BBH inputs list."""

from __future__ import annotations

import pandas as pd
import pytest

from impetus.benchmarks import get_benchmark
from impetus.benchmarks.grading import build_choice_table, grade_choices


def test_arc_context_is_lm_evals_prompt_and_shots_end_in_their_right_choice(loaded):
    bench, df = loaded("arc_easy")
    test = df[df["split"] == "test"].iloc[0]
    assert bench.choice_context(test) == f"Question: {test['question']}\nAnswer:"
    shot = df[df["split"] == "fewshot"].iloc[0]
    right = bench.choice_texts(shot)[bench.choice_labels(shot).index(shot["gold"])]
    assert bench.choice_context(test, [shot]) == (
        f"Question: {shot['question']}\nAnswer: {right}\n\nQuestion: {test['question']}\nAnswer:")


def test_choice_table_and_exact_grading_follow_the_labels(loaded):
    bench, df = loaded("arc_challenge")
    numeric = df[df["meta"].str.contains('"labels": \\["1"')].head(1)  # ~2% of ARC uses 1-4
    problems = pd.concat([df[df["split"] == "test"].head(2), numeric], ignore_index=True)
    table = build_choice_table(bench, problems, None, shots=0)
    assert [c[0][0] for c in table["choices"]] == [" "] * 3  # lm-eval's target delimiter
    rows = [{"problem_id": p, "sample_idx": j, "completion": c, "finish_reason": "choice"}
            for p, cs in zip(table["problem_id"], table["choices"]) for j, c in enumerate(cs)]
    graded = grade_choices(bench, pd.DataFrame(rows), problems)
    assert graded.groupby("problem_id")["correct"].sum().tolist() == [1, 1, 1]  # exactly one right choice each
    right = graded[graded["correct"]]
    assert (right["answer"].to_numpy() == problems.set_index("problem_id").loc[right["problem_id"], "gold"].to_numpy()).all()
    assert (graded["answer_end"] - graded["answer_start"] == graded["completion"].str.len() - 1).all()


@pytest.mark.parametrize("task,choices,labels", [
    ("date_understanding", 6, "(A)"), ("navigate", 2, "Yes"), ("boolean_expressions", 2, "True"),
    ("formal_fallacies", 2, "valid"),
])
def test_bbh_choices_are_the_listed_options_or_the_tasks_fixed_answers(shared_data, task, choices, labels):
    bench = get_benchmark(f"bbh:{task}")
    df = bench.load(shared_data / "bbh")
    rows = df[df["split"] == "test"]
    row = rows.iloc[0]
    assert len(bench.choice_texts(row)) == choices and bench.choice_labels(row)[0] == labels
    assert bench.choice_context(row) == f"Q: {row['question']}\nA:"
    golds_found = sum(any(bench.grade(lab, r["gold"]) for lab in bench.choice_labels(r)) for _, r in rows.iterrows())
    assert golds_found == len(rows)


def test_a_free_form_task_has_no_choices_and_the_table_says_which_problem(shared_data):
    bench = get_benchmark("bbh:word_sorting")
    df = bench.load(shared_data / "bbh")
    assert bench.choice_texts(df.iloc[0]) is None
    with pytest.raises(ValueError, match="no choices to score"):
        build_choice_table(bench, df[df["split"] == "test"].head(1), None, shots=0)
