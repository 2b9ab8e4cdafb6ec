"""Adaptive N online (issue 26): waves are prefixes of the full-N run, stops equal the offline
evaluation's, shards are checked by replaying the rule, and a kill -9 mid-wave loses nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from impetus.lm.runner import RECORD_COLUMNS, make_run_key, sample_problems
from impetus.lm.sampler import SamplingParams, get_sampler
from impetus.selection.adaptive import fires, wave_table
from impetus.selection.online import ONLINE_RULES, WaveStop, choose_stop, with_vote_columns

ADAPTIVE = SamplingParams(n=6, temperature=1.0, top_p=0.95, max_new_tokens=6, stop=["\n"], batch_size=8, seed=3)


def problems_table(k: int = 5) -> pd.DataFrame:
    return pd.DataFrame({"problem_id": [f"p{i}" for i in range(k)], "prompt": [f"Q: {i}*{i}?\nA:" for i in range(k)]})


def parity(_pid: str, text: str) -> str:
    """A two-valued 'answer' of random text, so some problems settle early and some never."""
    return str(len(text) % 2)


def settled_first_two() -> WaveStop:
    """p0 and p1 always agree (stop after one wave); the others never have an answer (all N rows)."""
    return WaveStop("vote_margin", 0.9, 2, lambda pid, text: "same" if pid in ("p0", "p1") else None)


class Calls:
    """Sampler wrapper recording each generate call's (problem count, first_sample, n)."""

    name = "calls"

    def __init__(self, inner):
        self.inner, self.log = inner, []

    def generate(self, prompts, params, seeds, progress=None, first_sample=0, **kw):
        self.log.append((len(prompts), first_sample, params.n))
        return self.inner.generate(prompts, params, seeds, progress, first_sample=first_sample, **kw)


def _texts(df: pd.DataFrame) -> pd.DataFrame:
    return df[["problem_id", "sample_idx", "completion", "n_tokens", "finish_reason", "seed"]].reset_index(drop=True)


def _offline_counts(full: pd.DataFrame, stop: WaveStop) -> dict[str, int]:
    """Where the offline evaluation (wave_table + fires) stops each problem of the full-N table."""
    d = with_vote_columns(full, stop.rule, stop.answer_of).assign(correct=False)
    t = wave_table(d, ONLINE_RULES[stop.rule], stop.wave).sort_values(["problem_id", "k"])
    fire = fires(t, stop.threshold) | (t["k"] == t["k"].max())
    return t[fire].groupby("problem_id")["k"].first().astype(int).to_dict()


@pytest.mark.parametrize("rule,threshold", [("vote_margin", 1.0), ("deepconf", 0.8)])
def test_online_rows_are_the_full_runs_first_rows(tiny, tmp_path, rule, threshold):
    probs = problems_table(8)
    full, _ = sample_problems(get_sampler("hf", *tiny), probs, ADAPTIVE, tmp_path / "full", shard_size=3,
                              progress=False)
    stop = WaveStop(rule, threshold, 2, parity)
    s = Calls(get_sampler("hf", *tiny))
    online, stats = sample_problems(s, probs, ADAPTIVE, tmp_path / "online", shard_size=3, progress=False, stop=stop)
    counts = online.groupby("problem_id").size().to_dict()
    assert counts == _offline_counts(full, stop)  # the sampler stopped where the offline evaluation does
    assert 2 in counts.values() and 6 in counts.values()  # both an early stop and a full problem: not vacuous
    first = full[full["sample_idx"] < full["problem_id"].map(counts)]
    pd.testing.assert_frame_equal(_texts(online), _texts(first))
    for col in RECORD_COLUMNS[:3]:  # recorded floats agree up to batch-composition rounding
        for x, y in zip(online[col], first[col]):
            np.testing.assert_allclose(np.asarray(x, float), np.asarray(y, float), atol=1e-4)
    assert stats.samples_per_problem == pytest.approx(len(online) / 8)
    assert all(n == 2 and f % 2 == 0 for _, f, n in s.log)  # waves of 2, at sample offsets 0, 2, 4
    assert stats.tokens == online["n_tokens"].sum() < full["n_tokens"].sum()


def test_adaptive_run_key_and_manifest_carry_the_rule(tiny, tmp_path):
    stop = settled_first_two()
    key = make_run_key("m", ADAPTIVE, problems_table(), stop.describe())
    assert key != make_run_key("m", ADAPTIVE, problems_table())
    assert key != make_run_key("m", ADAPTIVE, problems_table(), {**stop.describe(), "threshold": 0.8})
    sample_problems(get_sampler("hf", *tiny), problems_table(), ADAPTIVE, tmp_path, shard_size=2, run_key="k",
                    progress=False, stop=stop)
    manifest = json.loads((tmp_path / "k" / "shard_00000.json").read_text())
    assert manifest["adaptive"] == {"rule": "vote_margin", "threshold": 0.9, "wave": 2}


def test_a_shard_cut_short_is_resampled(tiny, tmp_path):
    s = Calls(get_sampler("hf", *tiny))
    kw = dict(shard_size=2, run_key="k", progress=False, stop=settled_first_two())
    clean, _ = sample_problems(s, problems_table(), ADAPTIVE, tmp_path, **kw)
    assert clean.groupby("problem_id").size().tolist() == [2, 2, 6, 6, 6]
    for shard, drop in [(0, ("p0", 1)), (1, ("p3", 5))]:  # a stopped problem, a full one, each losing its last row
        pq = tmp_path / "k" / f"shard_{shard:05d}.parquet"
        df = pd.read_parquet(pq)
        df[~((df["problem_id"] == drop[0]) & (df["sample_idx"] == drop[1]))].to_parquet(pq, index=False)
    s.log.clear()
    again, stats = sample_problems(s, problems_table(), ADAPTIVE, tmp_path, **kw)
    assert stats.problems_reused == 1  # only the untouched shard 2
    assert [c[0] for c in s.log if c[1] == 0] == [2, 2]  # shards 0 and 1 resampled from their first wave
    pd.testing.assert_frame_equal(_texts(again), _texts(clean))


def test_kill_during_a_wave_loses_nothing(tiny, tmp_path):
    """SIGKILL a sampler in a shard's second wave: the rerun reuses the finished shard and matches a clean run."""
    from .test_runner import kill_at_marker  # here: _adaptive_child imports this module outside the package

    kill_at_marker(Path(__file__).with_name("_adaptive_child.py"), tmp_path / "run", tmp_path, "a second wave")
    s = Calls(get_sampler("hf", *tiny))
    resumed, stats = sample_problems(s, problems_table(), ADAPTIVE, tmp_path / "run", shard_size=2, run_key="k",
                                     progress=False, stop=settled_first_two())
    assert stats.problems_reused == 2 and s.log[0] == (2, 0, 2)  # shard 0 reused; shard 1 from its first wave
    clean, _ = sample_problems(get_sampler("hf", *tiny), problems_table(), ADAPTIVE, tmp_path / "clean", shard_size=2,
                               run_key="k", progress=False, stop=settled_first_two())
    pd.testing.assert_frame_equal(_texts(resumed), _texts(clean))


def test_choose_stop_picks_the_offline_reports_threshold():
    """On the same train-side rows, the online threshold is the one the offline report would choose."""
    from impetus.selection.adaptive import adaptive_report

    rng = np.random.default_rng(0)
    rows = []
    for p in range(40):
        easy = p % 2 == 0
        for j in range(8):
            a = "7" if easy or rng.random() < 0.4 else str(rng.integers(0, 5))
            rows.append({"problem_id": f"q{p}", "sample_idx": j, "answer": a, "correct": a == "7",
                         "n_tokens": 10, "completion": a})
    df = pd.DataFrame(rows)
    got = choose_stop(df, "vote_margin", 2, [0.5, 0.75, 1.0], 0.01)
    report, _ = adaptive_report(df, df, {"vote_margin": ONLINE_RULES["vote_margin"]}, 2, [0.5, 0.75, 1.0], 0.01)
    assert got["threshold"] == report["vote_margin"]["threshold"]
    assert got["selection"]["tokens_saved"] == pytest.approx(report["vote_margin"]["dev"]["tokens_saved"])
    assert got["selection"]["tokens_saved"] > 0.3  # the easy half settles after one wave


def test_adaptive_config_rules():
    from pydantic import ValidationError

    from impetus.framework.config import SamplingStageParams

    base = {k: v for k, v in _yaml_sampling().items()}
    assert SamplingStageParams(**{**base, "adaptive": False}).adaptive == "off"  # YAML's `off`
    with pytest.raises(ValidationError, match="sampling.candidates = sampled"):
        SamplingStageParams(**{**base, "adaptive": "vote_margin", "candidates": "choices"})
    with pytest.raises(ValidationError):
        SamplingStageParams(**{**base, "adaptive": "energy_vote"})  # needs a learned energy: not online
    with pytest.raises(ValueError, match="unknown adaptive rule"):
        WaveStop("energy_vote", 0.5, 2, parity)


def _yaml_sampling() -> dict:
    import yaml

    root = Path(__file__).resolve().parents[2]
    return yaml.safe_load((root / "conf/base/parameters_sampling.yml").read_text())["sampling"]


def test_an_adaptive_shard_holds_as_many_problems_as_a_full_shard_holds_rows():
    """Each wave is a generate call ending on its own tail, so waves need several batches of rows:
    an adaptive shard takes shard_size x N problems (the default: 16 x 8 = 128), not shard_size."""
    from impetus.selection.online import WaveStop

    assert WaveStop.shard_problems(16, 8) == 128 and WaveStop.shard_problems(16, 16) == 256
    assert WaveStop.shard_problems(3, 1) == 3  # N = 1: one wave, the full-N shard itself
