"""The ingest stage through Kedro's SequentialRunner: sizes, disjointness, determinism, bad input."""

from __future__ import annotations

import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from impetus.pipelines.ingest.pipeline import create_pipeline

ARITH = {"name": "arith", "source": "generated", "options": {"n_problems": 80, "digits": 2, "seed": 3}}


def _run(benchmark: dict, ingest: dict) -> DataCatalog:
    catalog = DataCatalog({"params:benchmark": MemoryDataset(benchmark), "params:ingest": MemoryDataset(ingest)})
    SequentialRunner().run(create_pipeline(), catalog)
    return catalog


def test_ingest_outputs_disjoint_sized_tables_and_counts():
    catalog = _run(ARITH, {"n_train": 30, "n_eval": 20, "seed": 0})
    train, evals = catalog["problems_train"].load(), catalog["problems_eval"].load()
    fewshot = catalog["problems_fewshot"].load()
    assert len(train) == 30 and len(evals) == 20 and len(fewshot) >= 1
    assert not set(train.problem_id) & set(evals.problem_id)
    assert not set(fewshot.question) & (set(train.question) | set(evals.question))
    assert list(train.columns) == ["problem_id", "benchmark", "split", "question", "choices", "gold", "meta"]
    metrics = catalog["metrics_ingest"].load()
    assert metrics["ingest/n_train"]["value"] == 30 and metrics["ingest/n_eval"]["value"] == 20
    assert metrics["ingest/n_loaded"]["value"] == 80 + len(fewshot)


def test_ingest_is_deterministic_for_a_seed():
    a = _run(ARITH, {"n_train": 10, "n_eval": 10, "seed": 1})["problems_eval"].load()
    b = _run(ARITH, {"n_train": 10, "n_eval": 10, "seed": 1})["problems_eval"].load()
    pd.testing.assert_frame_equal(a, b)


def test_malformed_source_names_file_and_line(tmp_path):
    bad = tmp_path / "test.jsonl"
    bad.write_text('{"question": "q1", "answer": "#### 1"}\n{"question": "q2", "answer": "#### 2"}\n{not json\n')
    with pytest.raises(Exception, match=r"test\.jsonl.*line 3"):
        _run({"name": "gsm8k", "source": str(bad)}, {"n_train": 0, "n_eval": 1, "seed": 0})


def test_unknown_parameter_is_rejected_with_its_block_name():
    with pytest.raises(Exception, match="ingest"):
        _run(ARITH, {"n_train": 1, "n_eval": 1, "sed": 0})


def test_option_of_another_benchmark_is_rejected_with_valid_options():
    with pytest.raises(Exception, match=r"does not take option\(s\) \['n_problems'\].*valid options"):
        _run({"name": "svamp", "source": "unused", "options": {"n_problems": 5}}, {"n_train": 1, "n_eval": 1})
