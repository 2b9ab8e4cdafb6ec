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
