"""Sharded, resumable sampling: resume after SIGKILL, manifest checks, seeds, stats."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from impetus.lm.runner import CANDIDATE_COLUMNS, RECORD_COLUMNS, make_run_key, sample_problems, stable_seed
from impetus.lm.sampler import SamplingParams, get_sampler

PARAMS = SamplingParams(n=2, temperature=1.0, top_p=0.9, max_new_tokens=8, stop=["\n"], batch_size=8, seed=7)


def problems_table(k: int = 5) -> pd.DataFrame:
    return pd.DataFrame({"problem_id": [f"p{i}" for i in range(k)], "prompt": [f"Q: {i}+{i}?\nA:" for i in range(k)]})


class Counting:
    """Sampler wrapper counting generate calls and prompts."""

    name = "counting"

    def __init__(self, inner):
        self.inner, self.calls, self.prompts = inner, 0, 0

    def generate(self, prompts, params, seeds, progress=None):
        self.calls += 1
        self.prompts += len(prompts)
        return self.inner.generate(prompts, params, seeds, progress)


def _cmp(df: pd.DataFrame) -> pd.DataFrame:
    """Texts, tokens and seeds compare exactly; recorded floats see :func:`_records_close`."""
    return df.drop(columns=["gen_seconds", "logprob_mean", *RECORD_COLUMNS], errors="ignore").reset_index(drop=True)


def _records_close(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Recorded arrays agree up to float rounding (batch composition changes summation order)."""
    for col in RECORD_COLUMNS:
        for x, y in zip(a[col], b[col]):
            np.testing.assert_allclose(np.asarray(x, float), np.asarray(y, float), atol=1e-4)


def test_table_contract_and_stats(tiny, tmp_path):
    s = Counting(get_sampler("hf", *tiny))
    df, stats = sample_problems(s, problems_table(), PARAMS, tmp_path, shard_size=2, progress=True)
    assert list(df.columns) == CANDIDATE_COLUMNS + RECORD_COLUMNS  # the hf sampler records while decoding
    assert [len(v) for v in df["rec_lse"]] == (df["n_tokens"] + 1).tolist()
    assert len(df) == 10 and s.calls == 3
    assert df["problem_id"].tolist() == [f"p{i}" for i in range(5) for _ in range(2)]
    assert df["sample_idx"].tolist() == [0, 1] * 5
    assert df["seed"].tolist() == [stable_seed(7, f"p{i}") for i in range(5) for _ in range(2)]
    assert set(df["finish_reason"]) <= {"stop", "eos", "length"}
    assert (df["n_tokens"] <= 8).all() and (df["gen_seconds"] > 0).all()
    assert stats.tokens == df["n_tokens"].sum() and stats.tokens_per_s > 0
    assert 0 < stats.p50_seconds_per_problem <= stats.p95_seconds_per_problem
    # second run reuses all shards and returns the same table
    df2, stats2 = sample_problems(s, problems_table(), PARAMS, tmp_path, shard_size=2, progress=False)
    assert s.calls == 3 and stats2.problems_reused == 5 and stats2.tokens == 0
    pd.testing.assert_frame_equal(df, df2)


def test_results_do_not_depend_on_sharding(tiny, tmp_path):
    s = get_sampler("hf", *tiny)
    a, _ = sample_problems(s, problems_table(), PARAMS, tmp_path / "a", shard_size=2, progress=False)
    b, _ = sample_problems(s, problems_table(), PARAMS, tmp_path / "b", shard_size=5, progress=False)
    pd.testing.assert_frame_equal(_cmp(a), _cmp(b))
    _records_close(a, b)


def test_other_config_is_never_reused(tiny, tmp_path):
    s = Counting(get_sampler("hf", *tiny))
    sample_problems(s, problems_table(), PARAMS, tmp_path, shard_size=2, run_key="same", progress=False)
    other = SamplingParams(**{**PARAMS.to_dict(), "seed": 8})
    df, _ = sample_problems(s, problems_table(), other, tmp_path, shard_size=2, run_key="same", progress=False)
    assert s.calls == 6  # same folder, different params: every shard resampled
    assert df["seed"].iloc[0] == stable_seed(8, "p0")
    # run keys change with model, params and prompts, but not with batch_size
    k = make_run_key("m", PARAMS, problems_table())
    assert k == make_run_key("m", SamplingParams(**{**PARAMS.to_dict(), "batch_size": 1}), problems_table())
    assert k != make_run_key("m2", PARAMS, problems_table())
    assert k != make_run_key("m", other, problems_table())
    assert k != make_run_key("m", PARAMS, problems_table(4))


def test_bad_problem_tables(tiny, tmp_path):
    s = get_sampler("hf", *tiny)
    with pytest.raises(ValueError, match="prompt"):
        sample_problems(s, pd.DataFrame({"problem_id": ["a"]}), PARAMS, tmp_path)
    dup = pd.DataFrame({"problem_id": ["a", "a"], "prompt": ["x", "y"]})
    with pytest.raises(ValueError, match="duplicate problem_id"):
        sample_problems(s, dup, PARAMS, tmp_path)


def _wait_for_marker(stream, marker: str) -> bool:
    """Read lines until one is ``marker`` (True) or the stream ends (False)."""
    return any(line.strip() == marker for line in stream)


def kill_at_marker(child: Path, run_dir: Path, tmp_path: Path, what: str) -> None:
    """Run ``child run_dir`` until it prints HANGING (it then sleeps inside ``what``), SIGKILL it, and
    check that only its first shard is on disk: the shard in flight left nothing half-written."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    err = tmp_path / "child.err"  # stderr apart: library warnings never mix with the protocol on stdout
    proc = subprocess.Popen([sys.executable, str(child), str(run_dir)], env=env,
                            stdout=subprocess.PIPE, stderr=err.open("w"), text=True)
    try:
        # Scan for the protocol marker: a library may print anything on stdout before it.
        assert _wait_for_marker(proc.stdout, "HANGING"), f"child never reached {what}: {err.read_text()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    done = sorted(p.name for p in (run_dir / "k").iterdir() if p.suffix != ".lock")
    assert done == ["shard_00000.json", "shard_00000.parquet"]


def test_resume_after_sigkill(tiny, tmp_path):
    """Kill -9 a sampling process after its first shard; the rerun reuses it and matches a clean run."""
    kill_at_marker(Path(__file__).with_name("_resume_child.py"), tmp_path / "run", tmp_path, "shard 2")

    s = Counting(get_sampler("hf", *tiny))
    resumed, stats = sample_problems(s, problems_table(), PARAMS, tmp_path / "run", shard_size=2, run_key="k",
                                     progress=False)
    assert s.calls == 2 and s.prompts == 3 and stats.problems_reused == 2
    clean, _ = sample_problems(get_sampler("hf", *tiny), problems_table(), PARAMS, tmp_path / "clean",
                               shard_size=2, run_key="k", progress=False)
    pd.testing.assert_frame_equal(_cmp(resumed), _cmp(clean))
