"""Bad input fails fast with the file and line; the hub path explains how to go offline."""

import json
import os

import pytest

from impetus.benchmarks import get_benchmark
from impetus.benchmarks._io import DataFormatError


def _gsm_folder(tmp_path, lines):
    (tmp_path / "test.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


GOOD = json.dumps({"question": "What is 1 + 1?", "answer": "1 + 1 = 2\n#### 2"})


def test_malformed_json_names_file_and_line(tmp_path):
    folder = _gsm_folder(tmp_path, [GOOD, GOOD.replace("2?", "3?"), '{"question": "broken"'])
    with pytest.raises(ValueError, match=r"test\.jsonl: line 3: malformed JSON"):
        get_benchmark("gsm8k").load(folder)


def test_missing_field_names_field_file_and_line(tmp_path):
    folder = _gsm_folder(tmp_path, [GOOD, json.dumps({"question": "no answer"})])
    with pytest.raises(DataFormatError, match=r"test\.jsonl: line 2: missing required field 'answer'"):
        get_benchmark("gsm8k").load(folder)


def test_missing_final_answer_line(tmp_path):
    folder = _gsm_folder(tmp_path, [json.dumps({"question": "q", "answer": "no marker"})])
    with pytest.raises(ValueError, match="line 1.*####"):
        get_benchmark("gsm8k").load(folder)


def test_svamp_array_errors(tmp_path):
    f = tmp_path / "SVAMP.json"
    rec = {"ID": "a", "Body": "b", "Question": "q", "Equation": "( 1.0 + 1.0 )", "Answer": 2.0}
    f.write_text(json.dumps([rec, {k: v for k, v in rec.items() if k != "Equation"}], indent=4))
    with pytest.raises(DataFormatError, match=r"SVAMP\.json: line 9: missing required field 'Equation'"):
        get_benchmark("svamp").load(f)
    f.write_text('[\n  {"ID": "a",\n  "Body": }\n]')
    with pytest.raises(ValueError, match=r"SVAMP\.json: line 3: malformed JSON"):
        get_benchmark("svamp").load(f)


def test_arc_bad_answer_key(tmp_path):
    f = tmp_path / "ARC-Challenge-test.jsonl"
    f.write_text(json.dumps({"id": "x", "question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]},
                             "answerKey": "C"}) + "\n")
    with pytest.raises(DataFormatError, match="line 1: answerKey 'C'"):
        get_benchmark("arc_challenge").load(f)


def test_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; expected"):
        get_benchmark("math500").load(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"test\.jsonl not found"):
        get_benchmark("gsm8k").load(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"ARC-Easy-test\.jsonl"):
        get_benchmark("arc_easy").load(tmp_path)
    with pytest.raises(FileNotFoundError, match="navigate.json"):
        get_benchmark("bbh:navigate").load(tmp_path)


def test_fewshot_without_exemplars_is_a_clear_error(tmp_path):
    b = get_benchmark("gsm8k")
    df = b.load(_gsm_folder(tmp_path, [GOOD]))  # test only: no train split to draw from
    with pytest.raises(ValueError, match="no few-shot exemplars"):
        b.prompt(df.iloc[0], "fewshot")
    assert b.prompt(df.iloc[0], "fewshot", shots=[{"problem_id": "s", "question": "Q1", "gold": "3", "meta": "{}"}])
    assert len(b.fewshot_rows()) == 0


@pytest.mark.parametrize("name", ["gsm8k", "svamp", "arc_challenge", "bbh:navigate", "math500"])
def test_hf_source_offline_error(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(RuntimeError, match=r"set benchmark\.source to a local path"):
        get_benchmark(name).load("hf")


# ---------------------------------------------------------------- empty sources name the file
from impetus.benchmarks._io import EmptySourceError  # noqa: E402


@pytest.mark.parametrize("content, why", [("", r"file is empty \(0 bytes\)"), ("\n  \n", "no records")])
def test_empty_jsonl_names_the_file(tmp_path, content, why):
    (tmp_path / "test.jsonl").write_text(content)
    with pytest.raises(EmptySourceError, match=rf"{tmp_path / 'test.jsonl'}: {why}"):
        get_benchmark("gsm8k").load(tmp_path)
    with pytest.raises(EmptySourceError, match=rf"{tmp_path / 'test.jsonl'}: {why}"):
        get_benchmark("math500").load(tmp_path / "test.jsonl")


def test_empty_train_file_next_to_good_test_file_is_named(tmp_path):
    _gsm_folder(tmp_path, [GOOD])
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(EmptySourceError, match=r"train\.jsonl: file is empty"):
        get_benchmark("gsm8k").load(tmp_path)


def test_empty_json_sources_name_the_file(tmp_path):
    f = tmp_path / "SVAMP.json"
    f.write_text("")
    with pytest.raises(EmptySourceError, match=r"SVAMP\.json: file is empty \(0 bytes\)"):
        get_benchmark("svamp").load(f)
    f.write_text("[]")
    with pytest.raises(EmptySourceError, match=r"SVAMP\.json: the JSON array holds no problems"):
        get_benchmark("svamp").load(f)
    (tmp_path / "navigate.json").write_text('{"examples": []}')
    with pytest.raises(EmptySourceError, match=r"navigate\.json: 'examples' is empty"):
        get_benchmark("bbh:navigate").load(tmp_path / "navigate.json")
    arc = tmp_path / "ARC-Easy-test.jsonl"
    arc.write_text("")
    with pytest.raises(EmptySourceError, match=r"ARC-Easy-test\.jsonl: file is empty"):
        get_benchmark("arc_easy").load(tmp_path)


def test_source_with_no_problems_is_named(tmp_path, monkeypatch):
    b = get_benchmark("gsm8k")
    monkeypatch.setattr(b, "_load_local", lambda path: [])
    with pytest.raises(EmptySourceError, match=rf"gsm8k: source '{tmp_path}' has no problems"):
        b.load(tmp_path)


def test_bad_line_after_good_ones_still_names_file_and_line(tmp_path):
    folder = _gsm_folder(tmp_path, [GOOD, "", "[1, 2]"])
    with pytest.raises(DataFormatError, match=r"test\.jsonl: line 3: expected a JSON object, got list"):
        get_benchmark("gsm8k").load(folder)


# ---------------------------------------------------------------- bad input that used to get through
def _good(n: int) -> str:
    """A valid GSM8K line whose question (hence id) differs for each ``n``."""
    return json.dumps({"question": f"What is 1 + {n}?", "answer": f"1 + {n} = {n + 1}\n#### {n + 1}"})


def test_non_utf8_byte_names_file_and_line(tmp_path):
    good = (GOOD + "\n").encode()
    (tmp_path / "test.jsonl").write_bytes(good + (_good(2) + "\n").encode() + b'{"question": "caf\xe9?", "answer": "#### 1"}\n')
    with pytest.raises(DataFormatError, match=r"test\.jsonl: line 3: not valid UTF-8 \(byte 0xe9 at column 18\)"):
        get_benchmark("gsm8k").load(tmp_path)
    svamp = tmp_path / "SVAMP.json"
    svamp.write_bytes(b'[\n  {"ID": "a",\n   "Body": "caf\xe9"}\n]')
    with pytest.raises(DataFormatError, match=r"SVAMP\.json: line 3: not valid UTF-8"):
        get_benchmark("svamp").load(svamp)


def test_huge_question_is_rejected_with_file_line_and_limit(tmp_path):
    from impetus.benchmarks.base import Benchmark

    limit = Benchmark.max_question_chars
    assert f"{limit:,}" in Benchmark.__doc__  # the limit is stated where users read it
    huge = json.dumps({"question": "x" * 10_000_000, "answer": "#### 1"})
    folder = _gsm_folder(tmp_path, [GOOD, huge])
    with pytest.raises(DataFormatError, match=rf"test\.jsonl: line 2: question has 10,000,000 characters; the limit is {limit:,}"):
        get_benchmark("gsm8k").load(folder)
    just_fits = json.dumps({"question": "x" * limit, "answer": "#### 1"})
    assert len(get_benchmark("gsm8k").load(_gsm_folder(tmp_path, [GOOD, just_fits]))) == 2


def test_empty_question_is_rejected(tmp_path):
    folder = _gsm_folder(tmp_path, [GOOD, json.dumps({"question": "  ", "answer": "#### 1"})])
    with pytest.raises(DataFormatError, match=r"test\.jsonl: line 2: question is empty"):
        get_benchmark("gsm8k").load(folder)


def _arc_line(texts: list[str], key: str = "A", qid: str = "x") -> str:
    labels = [chr(ord("A") + i) for i in range(len(texts))]
    return json.dumps({"id": qid, "question": "q?", "choices": {"text": texts, "label": labels}, "answerKey": key})


def test_arc_item_with_one_choice_is_rejected(tmp_path):
    from impetus.benchmarks.arc import ARCChallenge

    assert "at least 2 choices" in ARCChallenge.__mro__[1].__doc__
    f = tmp_path / "ARC-Challenge-test.jsonl"
    f.write_text(_arc_line(["a", "b"], qid="ok") + "\n" + _arc_line(["the answer"], qid="one") + "\n")
    with pytest.raises(DataFormatError, match=r"ARC-Challenge-test\.jsonl: line 2: 1 choice\(s\); at least 2"):
        get_benchmark("arc_challenge").load(f)
    f.write_text(_arc_line(["a", "b"]) + "\n")
    assert get_benchmark("arc_challenge").load(f).choices.map(len).tolist() == [2]


def test_duplicate_problem_ids_name_both_files_and_lines(tmp_path):
    folder = _gsm_folder(tmp_path, [GOOD, _good(3)])
    (tmp_path / "train.jsonl").write_text("\n".join([_good(4), _good(5), GOOD]) + "\n")
    with pytest.raises(DataFormatError, match=(
        rf"{tmp_path / 'train.jsonl'}: line 3: duplicate problem_id 'gsm8k-\w+' \(first at {tmp_path / 'test.jsonl'}: line 1\)"
    )):
        get_benchmark("gsm8k").load(folder)


def test_offline_hub_error_names_the_parameter(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match=r"set benchmark\.source to a local path, e\.g\. '\.\./shared/data/gsm8k'"):
        get_benchmark("gsm8k").load("hf")


def test_benchmark_modules_import_no_cycle():
    """No module of impetus.benchmarks imports one that (directly or not) imports it back."""
    import ast
    from pathlib import Path

    import impetus.benchmarks as pkg

    folder = Path(pkg.__file__).parent
    graph = {}
    for f in folder.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):  # function-level (lazy) imports count too
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("impetus.benchmarks."):
                deps.add(node.module.rsplit(".", 1)[1])
        graph[f.stem] = deps

    def reaches(src, dst, seen=()):
        return any(d == dst or (d not in seen and reaches(d, dst, (*seen, d))) for d in graph.get(src, ()))

    assert "base" in graph and "_io" in graph
    assert not [m for m in graph if m != "__init__" and reaches(m, m)]
