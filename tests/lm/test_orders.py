"""Sampling over several orders of a problem's choices: n candidates per problem, order by order."""

from __future__ import annotations

import pandas as pd
import pytest

from impetus.lm import orders
from impetus.lm.runner import sample_problems
from impetus.lm.sampler import SamplingParams, get_sampler


def test_sampling_over_orders_gives_n_candidates_per_problem(tiny, tmp_path):
    table = pd.DataFrame({"problem_id": ["a", "a", "b", "b"], "order": [0, 1, 0, 1],
                          "prompt": ["Q: 1?\nA:", "Q: 1 again?\nA:", "Q: 2?\nA:", "Q: 2 again?\nA:"]})
    n_each = orders.per_order(4, 2)
    params = SamplingParams(n=n_each, temperature=1.0, top_p=0.9, max_new_tokens=4, stop=["\n"], batch_size=8, seed=1)
    raw, _ = sample_problems(get_sampler("hf", *tiny), orders.as_items(table), params, tmp_path, shard_size=1,
                             progress=False)
    assert raw["problem_id"].tolist() == ["a@order0"] * 2 + ["a@order1"] * 2 + ["b@order0"] * 2 + ["b@order1"] * 2
    merged = orders.merge(raw, n_each)
    assert merged["problem_id"].tolist() == ["a"] * 4 + ["b"] * 4
    assert merged["sample_idx"].tolist() == [0, 1, 2, 3] * 2 and merged["order"].tolist() == [0, 0, 1, 1] * 2
    assert orders.problem_of("a@order1") == "a" and orders.problem_of("plain") == "plain"
    with pytest.raises(ValueError, match="split evenly"):
        orders.per_order(8, 3)


def test_sampling_stage_with_choice_orders_on_multiple_choice(tiny, tmp_path):
    """make_prompts -> sample_candidates -> grade_split on ARC-like rows with 2 orders of the choices."""
    import json

    from impetus.framework.config import BenchmarkParams, SamplingStageParams
    from impetus.pipelines.sampling.nodes import grade_split, make_prompts, sample_candidates

    model, tok = tiny
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    base_lm = {"path": str(tmp_path / "lm"), "device": "cpu", "dtype": "float32"}

    def rows(prefix: str, k: int) -> pd.DataFrame:
        return pd.DataFrame([{"problem_id": f"{prefix}{i}", "benchmark": "arc_easy", "split": "test",
                              "question": f"Pick {i}", "choices": ["red", "green", "blue"], "gold": "ABC"[i % 3],
                              "meta": json.dumps({"labels": ["A", "B", "C"]})} for i in range(k)])

    problems, shots = rows("q", 3), rows("s", 2)
    bench = BenchmarkParams(name="arc_easy", source="unused", options={})
    sampling = SamplingStageParams(backend="hf", executor="local", prompt_style="fewshot", n=4, temperature=1.0, top_p=1.0,
                                   max_new_tokens=5, stop=None, batch_size=8, shard_size=2, seed=0,
                                   shard_dir=str(tmp_path / "shards"), progress=False, record=True, choice_orders=2,
                                   candidates="sampled", choice_shots=0, reuse_dir=None, adaptive="off")
    shots["question"] = ["Shot one", "Shot two"]
    prompts = make_prompts(problems, shots, base_lm, bench, sampling, "eval")
    assert prompts["order"].tolist() == [0, 1] * 3
    arc = bench.build()
    for (_, r), row in zip(prompts.iterrows(), [p for p in problems.to_dict("records") for _ in range(2)]):
        shown = arc.permuted(row, int(r["order"]))["choices"]
        assert r["prompt"].endswith("\n".join(f"({lab}) {c}" for lab, c in zip("ABC", shown)) + "\nA:")
    candidates, _ = sample_candidates(prompts, problems, base_lm, bench, sampling, None, split="eval")
    assert candidates["problem_id"].tolist() == [p for p in problems["problem_id"] for _ in range(4)]
    assert candidates["sample_idx"].tolist() == [0, 1, 2, 3] * 3 and candidates["order"].tolist() == [0, 0, 1, 1] * 3
    graded, _ = grade_split(candidates, problems, bench, "eval")
    # Whatever the random model wrote, every answer found is a source label.
    assert set(graded["answer"].dropna()) <= {"A", "B", "C"}
    with pytest.raises(ValueError, match="split evenly"):
        SamplingStageParams(**(sampling.model_dump() | {"choice_orders": 3}))
