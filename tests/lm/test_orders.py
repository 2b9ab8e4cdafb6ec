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
