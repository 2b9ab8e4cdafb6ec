"""Loading the real shared data: counts, ids, gold rates, prompts, parquet round trip."""

import json
import random

import pandas as pd
import pytest

from impetus.benchmarks import COLUMNS, get_benchmark
from impetus.benchmarks.base import meta_of

pytestmark = pytest.mark.data


@pytest.mark.parametrize(
    "name, counts",
    [("gsm8k", {"train": 7469, "test": 1319, "fewshot": 4}),
     ("svamp", {"test": 996, "fewshot": 4}),
     ("arc_challenge", {"train": 1115, "validation": 299, "test": 1172, "fewshot": 4}),
     ("arc_easy", {"train": 2247, "validation": 570, "test": 2376, "fewshot": 4}),
     ("bbh", {"test": 6511, "fewshot": 81}),
     ("math500", {"test": 496, "fewshot": 4})],
)
def test_counts_schema_and_ids(loaded, name, counts):
    b, df = loaded(name)
    assert list(df.columns) == COLUMNS
    assert df["split"].value_counts().to_dict() == counts
    assert df["problem_id"].is_unique and (df["benchmark"] == name).all()
    assert df["gold"].map(lambda g: isinstance(g, str) and g != "").all()
    assert df["meta"].map(lambda m: isinstance(json.loads(m), dict)).all()
    # Exemplars are exactly the rows marked "fewshot", never a test row.
    assert set(b.fewshot_rows()["problem_id"]) == set(df.loc[df.split == "fewshot", "problem_id"])


def test_ids_stable_across_loads_and_seeds(shared_data, loaded):
    _, df = loaded("gsm8k")
    again = get_benchmark("gsm8k", seed=5).load(shared_data / "gsm8k")
    assert list(again["problem_id"]) == list(df["problem_id"])
    assert list(again["question"]) == list(df["question"])


def test_gsm8k_gold_extraction_is_total(loaded):
    b, df = loaded("gsm8k")
    extracted = [b.extract(json.loads(m)["solution"]) for m in df["meta"]]
    assert extracted == list(df["gold"])
    assert "1,080" not in set(df["gold"]) and df["gold"].str.fullmatch(r"-?\d+(\.\d+)?").all()


def test_gsm8k_format_solution(loaded):
    b, df = loaded("gsm8k")
    row = df[df.split == "train"].iloc[0]
    sol = b.format_solution(row)
    assert sol.endswith(f"The answer is {row['gold']}.") and "<<" not in sol and "####" not in sol


def test_svamp_fields_and_exemplar(loaded):
    b, df = loaded("svamp")
    row = df.set_index("problem_id").loc["svamp-chal-1"]
    assert row["question"].startswith("Each pack of dvds costs 76 dollars.") and row["gold"] == "51"
    assert b.format_solution(row) == "76 - 25 = 51. The answer is 51."
    # The one source row whose Equation disagrees with Answer is never an exemplar.
    assert "svamp-chal-680" not in set(b.fewshot_rows()["problem_id"])


def test_arc_numeric_labels(loaded):
    b, df = loaded("arc_challenge")
    numeric = df[df["meta"].map(lambda m: meta_of({"meta": m})["labels"][0] == "1")]
    assert 10 < len(numeric) < 0.05 * len(df)
    row = numeric.iloc[0]
    labels = meta_of(row)["labels"]
    assert row["gold"] in labels and len(row["choices"]) == len(labels)
    assert f"({labels[0]}) {row['choices'][0]}" in b.prompt(row, "chat_cot")
    assert b.grade(b.extract(f"The answer is ({row['gold']}).", row), row["gold"])
    assert set(df["choices"].map(len)) == {3, 4, 5}


def test_bbh_answer_forms_and_prompt(shared_data, loaded):
    b, df = loaded("bbh")
    test = df[df.split == "test"]
    assert test["meta"].map(lambda m: json.loads(m)["task"]).nunique() == 27
    assert test["problem_id"].map(lambda p: p.split("-")[1]).nunique() == 27  # id includes the task
    gold = {json.loads(m)["task"]: g for m, g in zip(test["meta"], test["gold"])}
    for task, sample in [("date_understanding", "(A)"), ("boolean_expressions", "True"), ("formal_fallacies", "valid"),
                         ("web_of_lies", "Yes"), ("object_counting", "12"), ("word_sorting", "a b"),
                         ("dyck_languages", "] )")]:
        g = gold[task]
        assert b.grade(b.extract(f"Reasoning. So the answer is {g}."), g), task
    # Few-shot prompt = the cot-prompts file minus the canary, then the target question.
    row = test[test["meta"].str.contains('"navigate"')].iloc[0]
    text = b.prompt(row, "fewshot")
    cot = (shared_data / "bbh" / "cot-prompts" / "navigate.txt").read_text()
    assert "canary" not in text.lower()
    assert text.startswith(cot.split("-----\n", 1)[1].strip())
    assert text.endswith(f"Q: {row['question']}\nA: Let's think step by step.")
    # Every exemplar's own answer extracts to its gold.
    shots = b.fewshot_rows()
    assert all(b.extract(b.format_solution(r)) == r["gold"] for _, r in shots.iterrows())


def test_math500_gold_rate(loaded):
    b, df = loaded("math500")
    ok = [b.grade(b.extract(meta_of(r)["solution"]), r["gold"]) for _, r in df.iterrows()]
    assert sum(ok) / len(ok) >= 0.99
    assert all("[asy]" not in meta_of(r)["solution"] for _, r in b.fewshot_rows().iterrows())


@pytest.mark.parametrize("name", ["gsm8k", "svamp", "arc_easy", "bbh", "math500"])
def test_prompts_use_exemplars_never_the_row(loaded, name):
    b, df = loaded(name)
    row = df[df.split == "test"].iloc[3]
    text = b.prompt(row, "fewshot")
    shots = b.fewshot_rows()
    assert text.count(row["question"]) == 1 and text.rstrip().endswith(("A:", "step by step."))
    assert sum(s in text for s in shots["question"]) >= 3
    # Passing the row itself as a shot never leaks it.
    own = b.prompt(row, "fewshot", shots=pd.concat([shots, df.loc[[row.name]]]))
    assert own.count(row["question"]) == 1
    chat = b.prompt(row, "chat_cot")
    assert chat.startswith(row["question"]) and "answer" in chat.lower()


def test_parquet_round_trip(loaded, tmp_path):
    for name in ("arc_challenge", "bbh"):
        _, df = loaded(name)
        path = tmp_path / f"{name}.parquet"
        df.to_parquet(path)
        back = pd.read_parquet(path)
        assert list(back.columns) == COLUMNS and len(back) == len(df)
        i = random.Random(0).randrange(len(df))
        got, want = back.iloc[i], df.iloc[i]
        for col in ("problem_id", "split", "question", "gold", "meta"):
            assert got[col] == want[col]
        if want["choices"] is None:
            assert got["choices"] is None
        else:
            assert list(got["choices"]) == list(want["choices"])


def test_prompts_rebuild_from_persisted_shots(loaded, tmp_path):
    """The sampling stage makes a fresh benchmark and passes the exemplars saved by ingest."""
    for name in ("bbh", "arc_challenge", "gsm8k"):
        b, df = loaded(name)
        path = tmp_path / f"{name}_shots.parquet"
        b.fewshot_rows().to_parquet(path)
        shots = pd.read_parquet(path)
        fresh = get_benchmark(name)
        for row in df[df.split == "test"].head(3).to_dict("records"):
            assert fresh.prompt(row, "fewshot", shots=shots) == b.prompt(row, "fewshot"), name
