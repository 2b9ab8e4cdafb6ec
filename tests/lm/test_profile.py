"""The step profile splits a sampling call's wall time into parts that add up to it."""

from __future__ import annotations

import pytest

from impetus.lm.hf_sampler import HFSampler
from impetus.lm.profile import PARTS, format_profile, profile_call
from impetus.lm.sampler import SamplingParams


def test_profile_parts_add_up_to_the_wall_time(tiny):
    model, tok = tiny
    params = SamplingParams(n=4, temperature=1.0, top_p=0.9, max_new_tokens=8, stop=[], batch_size=8, seed=0)
    sampler = HFSampler(model, tok)
    seconds, wall = profile_call(lambda: sampler.generate(["ab", "cd e"], params, [0, 1]))
    assert list(seconds) == list(PARTS)
    assert sum(seconds.values()) == pytest.approx(wall, rel=0.05)
    for part in ("forward: matmuls", "forward: Python", "prefill", "nucleus sampling + statistics"):
        assert seconds[part] > 0, part
    table = format_profile(seconds, wall, "tiny")
    assert table.count("\n| ") == len(PARTS) + 1 and "| prefill |" in table


def test_profiles_print_side_by_side_with_each_runs_own_shares():
    from impetus.lm.profile import format_profiles

    a = (dict.fromkeys(PARTS, 0.5) | {"prefill": 1.0}, 4.5)
    b = (dict.fromkeys(PARTS, 1.0), 8.0)
    table = format_profiles({"bfloat16": a, "float32": b}, "t")
    assert "| part | bfloat16 s | bfloat16 share | float32 s | float32 share |" in table
    assert "| prefill | 1.00 | 22.2% | 1.00 | 12.5% |" in table  # each share over its own run's wall time
    assert "| wall under the profiler | 4.50 |  | 8.00 |  |" in table and table.count("\n| ") == len(PARTS) + 2
