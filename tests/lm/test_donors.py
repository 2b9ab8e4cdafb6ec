"""Scored choices reused across runs by item key (``impetus.lm.donors``): a new split that regroups
the same problems takes their rows from the earlier run's shards instead of scoring them again; a
new problem, another model or other recorded layers are scored."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from impetus.lm.donors import item_keys
from impetus.lm.executors import LocalExecutor
from impetus.lm.hf_sampler import HFSampler
from impetus.lm.runner import make_run_key, sample_problems
from impetus.lm.sampler import SamplingParams
from impetus.testing import tiny_llama, tiny_tokenizer

PARAMS = SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=1)
ALL = pd.DataFrame({
    "problem_id": ["p0", "p1", "p2", "p3"],
    "prompt": ["Q: mammal?\nA:", "Q: 1+1?\nA:", "Q: sky?\nA:", "Q: 2+2?\nA:"],
    "choices": [[" whale", " shark"], [" 2", " 3"], [" blue", " green", " red"], [" 4", " 5"]],
})


class CountingExecutor(LocalExecutor):
    """A local executor that remembers which problems it was asked to score."""

    def __init__(self, sampler):
        super().__init__(sampler)
        self.scored: list[str] = []

    def run(self, tasks, params, answer_span, on_tokens):
        for task, table in super().run(tasks, params, answer_span, on_tokens):
            self.scored += task.problem_ids
            yield task, table


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(layers=3), tiny_tokenizer()


def _run(lm, items, shard_dir, model_id="tiny", layers=("mid",), reuse_dir=None):
    executor = CountingExecutor(HFSampler(*lm, hidden_layers=layers))
    table, stats = sample_problems(
        None, items, PARAMS, shard_dir, shard_size=2, progress=False, executor=executor, reuse_dir=reuse_dir,
        run_key=make_run_key(model_id + str(layers), PARAMS, items),
        item_keys=item_keys(model_id + str(layers), PARAMS, items, record=True))
    return table, stats, executor.scored


def test_a_regrouped_split_takes_its_rows_from_the_earlier_run(lm, tmp_path):
    first, _, scored = _run(lm, ALL.iloc[:3], tmp_path)  # seed A: p0, p1 | p2
    assert scored == ["p0", "p1", "p2"]
    # Seed B puts p2 with p0 (a whole shard of known items) and p1 with the new p3.
    items = ALL.iloc[[2, 0, 1, 3]].reset_index(drop=True)
    second, stats, scored = _run(lm, items, tmp_path)
    assert scored == ["p1", "p3"]  # the shard with a new problem is scored whole
    assert stats.problems_from_other_runs == 2 and stats.problems_reused == 2
    cols = [c for c in first.columns if c != "gen_seconds"]
    for pid in ("p0", "p2"):
        pd.testing.assert_frame_equal(first[first.problem_id == pid][cols].reset_index(drop=True),
                                      second[second.problem_id == pid][cols].reset_index(drop=True))
    # The assembled shard is now the run's own (with its item keys): a rerun reads it, scoring nothing.
    manifests = [json.loads(p.read_text()) for p in tmp_path.glob("*/shard_*.json")]
    assert all(len(m["item_keys"]) == len(m["problem_ids"]) for m in manifests)
    _, again, scored = _run(lm, items, tmp_path)
    assert scored == [] and again.problems_reused == 4 and again.problems_from_other_runs == 0


def test_seed_folders_share_rows_through_reuse_dir(lm, tmp_path):
    """``make replicate`` gives each seed its own shard folder and points reuse_dir at their parent."""
    _run(lm, ALL.iloc[:2], tmp_path / "seed_0")
    _, stats, scored = _run(lm, ALL.iloc[[1, 0]], tmp_path / "seed_1")  # no reuse_dir: its own folder only
    assert scored == ["p1", "p0"] and stats.problems_from_other_runs == 0
    _, stats, scored = _run(lm, ALL.iloc[:2], tmp_path / "seed_2", reuse_dir=tmp_path)
    assert scored == [] and stats.problems_from_other_runs == 2


def test_other_layers_or_another_model_are_never_donors(lm, tmp_path):
    _run(lm, ALL.iloc[:2], tmp_path)
    _, stats, scored = _run(lm, ALL.iloc[:2], tmp_path, layers=(1, 2))
    assert scored == ["p0", "p1"] and stats.problems_from_other_runs == 0
    _, stats, scored = _run(lm, ALL.iloc[:2], tmp_path, model_id="other")
    assert scored == ["p0", "p1"] and stats.problems_from_other_runs == 0


def test_item_keys_follow_prompt_and_choices():
    keys = item_keys("m", PARAMS, ALL, record=True)
    assert len(set(keys)) == 4
    changed = ALL.assign(choices=[[" whale", " shark"], [" 2", " 4"], *ALL["choices"][2:]])
    assert item_keys("m", PARAMS, changed, record=True)[1] != keys[1]
    assert item_keys("m", PARAMS, changed, record=True)[0] == keys[0]
    assert item_keys("m", PARAMS, ALL, record=False)[0] != keys[0]
