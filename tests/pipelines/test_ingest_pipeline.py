"""The ingest stage through Kedro's SequentialRunner: sizes, disjointness, determinism, bad input."""

from __future__ import annotations

import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from impetus.framework.config import BenchmarkParams, IngestParams, SamplingStageParams
from impetus.pipelines.ingest.pipeline import create_pipeline

ARITH = {"name": "arith", "source": "generated", "options": {"arith": {"n_problems": 80, "digits": 2, "seed": 3}}}
SAMPLING = dict(backend="hf", executor="local", prompt_style="fewshot", n=2, temperature=0.8, top_p=0.95, max_new_tokens=8, stop=None,
                batch_size=4, shard_size=4, seed=0, shard_dir="unused", progress=False, record=True, choice_orders=1,
                candidates="sampled", choice_shots=0, reuse_dir=None, adaptive="off")


def _run(benchmark: dict, ingest: dict, style: str = "fewshot") -> DataCatalog:
    catalog = DataCatalog({
        "params:benchmark": MemoryDataset(BenchmarkParams(**benchmark)),
        "params:ingest": MemoryDataset(IngestParams(**{"n_dev": 0, **ingest})),
        "params:sampling": MemoryDataset(SamplingStageParams(**{**SAMPLING, "prompt_style": style})),
    })
    SequentialRunner().run(create_pipeline(), catalog)
    return catalog


def test_ingest_outputs_disjoint_sized_tables_and_counts():
    catalog = _run(ARITH, {"n_train": 30, "n_dev": 10, "n_eval": 20, "seed": 0})
    train, evals = catalog["problems_train"].load(), catalog["problems_eval"].load()
    dev = catalog["problems_dev"].load()
    assert len(dev) == 10 and not set(dev.problem_id) & (set(train.problem_id) | set(evals.problem_id))
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
        _run({"name": "gsm8k", "source": str(bad), "options": {}}, {"n_train": 0, "n_eval": 1, "seed": 0}, "chat_cot")


def test_test_jsonl_alone_fails_at_ingest_with_a_hint_for_fewshot_prompts(tmp_path):
    src = tmp_path / "test.jsonl"
    src.write_text("".join(f'{{"question": "q{i}", "answer": "#### {i}"}}\n' for i in range(5)))
    with pytest.raises(ValueError, match=r"no few-shot exemplars.*train\.jsonl.*chat_cot"):
        _run({"name": "gsm8k", "source": str(src), "options": {}}, {"n_train": 0, "n_eval": 2, "seed": 0})
    catalog = _run({"name": "gsm8k", "source": str(src), "options": {}}, {"n_train": 0, "n_eval": 2, "seed": 0}, "chat_cot")
    assert len(catalog["problems_eval"].load()) == 2


def test_options_are_scoped_per_benchmark():
    # arith's options stay in the config when the benchmark is switched: only svamp's entry is used.
    both = {"name": "svamp", "source": "unused", "options": {**ARITH["options"], "svamp": {}}}
    assert BenchmarkParams(**both).benchmark_options() == {}
    with pytest.raises(Exception, match=r"does not take option\(s\) \['n_problems'\].*valid options"):
        BenchmarkParams(name="svamp", source="unused", options={"svamp": {"n_problems": 5}})
