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
    with pytest.raises(RuntimeError, match="pass a local path"):
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
