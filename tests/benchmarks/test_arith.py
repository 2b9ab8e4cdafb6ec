"""The generated arith benchmark: determinism, distinctness, exact gold, exemplars."""

import json

import pandas as pd
import pytest

from impetus.benchmarks import get_benchmark


def _load(**kw) -> tuple:
    b = get_benchmark("arith", **kw)
    return b, b.load("generated")


@pytest.mark.parametrize("n_ops, ops", [(1, "+"), (2, "+-*"), (3, "+-*")])
def test_deterministic_distinct_and_exact(n_ops, ops):
    b, df = _load(n_problems=200, n_ops=n_ops, ops=ops, digits=2, seed=0)
    _, again = _load(n_problems=200, n_ops=n_ops, ops=ops, digits=2, seed=0)
    pd.testing.assert_frame_equal(df, again)
    test = df[df.split == "test"]
    assert len(test) == 200 and test["question"].is_unique and df["problem_id"].is_unique
    for q, gold, meta in zip(test["question"], test["gold"], test["meta"]):
        expr = json.loads(meta)["expression"]
        assert q == f"What is {expr}?"
        assert int(eval(expr)) == int(gold) >= 0  # noqa: S307 - our own generated arithmetic
    if n_ops == 2:
        assert test["question"].str.match(r"What is \(\d+ [-+*] \d+\) [-+*] \d+\?").all()


def test_seed_changes_problems_and_ids_follow_text():
    _, a = _load(seed=0)
    _, b = _load(seed=1)
    assert set(a.question) != set(b.question)
    # The same question under the same params gets the same id whatever the seed.
    common = set(a.question) & set(b.question)
    ida, idb = dict(zip(a.question, a.problem_id)), dict(zip(b.question, b.problem_id))
    assert all(ida[q] == idb[q] for q in common)


def test_fewshot_disjoint_and_format():
    b, df = _load(n_problems=200)
    shots = b.fewshot_rows()
    assert len(shots) == 3 and (shots.split == "fewshot").all()
    assert not set(shots.question) & set(df[df.split == "test"].question)
    row = df.iloc[0]
    text = b.prompt(row, "fewshot")
    s = shots.iloc[0]
    a, op, c = s["question"][len("What is "):-1].split()
    assert f"Q: {s['question']}\nA: {a} {op} {c} = {s['gold']}. The answer is {s['gold']}.\n\n" in text
    assert text.endswith(f"Q: {row['question']}\nA:")
    assert b.extract(b.format_solution(s)) == s["gold"]


def test_word_form_steps():
    b, df = _load(form="word", n_ops=3, ops="+-*", n_problems=50, seed=3)
    row = df[df.split == "test"].iloc[0]
    assert row["question"].endswith("have now?") and "What is" not in row["question"]
    sol = b.format_solution(row)
    assert sol.count(" = ") == 3 and sol.endswith(f"The answer is {row['gold']}.")
    assert b.grade(b.extract(sol), row["gold"])


def test_too_few_distinct_problems_fails_clearly():
    with pytest.raises(ValueError, match="distinct"):
        _load(n_problems=500, digits=1, n_ops=1, ops="+")
    with pytest.raises(ValueError, match="ops"):
        get_benchmark("arith", ops="/")


def test_load_goes_through_the_base_class_and_output_is_unchanged(monkeypatch, caplog):
    """Arith only overrides the source dispatch (``_load_rows``); the base ``load`` does the rest.
    The digest was taken from the pre-refactor ``Arith.load`` (n_problems=200, seed 0)."""
    import hashlib

    from impetus.benchmarks.arith import Arith
    from impetus.benchmarks.base import Benchmark

    assert "load" not in vars(Arith) and "_load_rows" in vars(Arith)
    seen = []
    real = Benchmark._select_fewshot
    monkeypatch.setattr(Benchmark, "_select_fewshot", lambda self, df: seen.append(len(df)) or real(self, df))
    b, df = _load(n_problems=200, seed=0)
    assert seen == [203]  # the base class's exemplar bookkeeping ran on test + few-shot rows
    blob = json.dumps([df.to_dict("records"), b.fewshot_rows().to_dict("records")], sort_keys=True)
    assert hashlib.sha256(blob.encode()).hexdigest() == "a849c2ff752d29e1817b212d164ed49342a2b850444a565cad98889243abc8ce"
    with caplog.at_level("WARNING"):
        other = get_benchmark("arith", n_problems=200, seed=0).load("../some/folder")
    pd.testing.assert_frame_equal(df, other)
    assert any("source '../some/folder' is ignored" in r.getMessage() for r in caplog.records)


def test_zero_shots_and_zero_problems():
    b, df = _load(n_problems=10, n_shots=0)
    assert len(df) == 10 and len(b.fewshot_rows()) == 0
    with pytest.raises(ValueError, match="arith: source 'generated' has no problems"):
        _load(n_problems=0)


def test_constructor_defaults_match_the_yaml_defaults():
    import inspect
    from pathlib import Path

    import yaml

    from impetus.benchmarks.arith import Arith

    conf = Path(__file__).resolve().parents[2] / "conf" / "base" / "parameters_ingest.yml"
    options = yaml.safe_load(conf.read_text())["benchmark"]["options"]
    options = options.get("arith", options)  # per-benchmark layout {arith: {...}} or flat
    sig = inspect.signature(Arith.__init__).parameters
    assert {k: sig[k].default for k in options} == options


def test_second_digits_makes_one_digit_multipliers_and_leaves_the_default_alone():
    _, mul = _load(n_problems=150, ops="*", second_digits=1, seed=0)
    test = mul[mul.split == "test"]
    for q, gold, meta in zip(test["question"], test["gold"], test["meta"]):
        a, op, b = json.loads(meta)["expression"].split()
        assert op == "*" and 10 <= int(a) <= 99 and 1 <= int(b) <= 9 and int(a) * int(b) == int(gold)
        assert json.loads(meta)["second_digits"] == 1
    # Unset, it changes no problem, id or meta of the default testbed.
    _, plain = _load(n_problems=50, seed=3)
    _, unset = _load(n_problems=50, seed=3, second_digits=None)
    pd.testing.assert_frame_equal(plain, unset)
    assert "second_digits" not in json.loads(plain["meta"].iloc[0])
    with pytest.raises(ValueError, match="second_digits must be 1-9"):
        get_benchmark("arith", second_digits=0)
