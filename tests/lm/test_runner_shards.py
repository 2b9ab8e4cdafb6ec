"""Shard validation (corrupt / swapped / incomplete shards) and per-shard locking across runs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from impetus.lm import runner
from impetus.lm.runner import CANDIDATE_COLUMNS, IncompleteCandidatesError, check_complete, sample_problems

from .fakes import PARAMS, SHARD, FakeSampler, problems_table


def run(folder: Path, sampler: FakeSampler | None = None, key: str = "k") -> tuple[pd.DataFrame, runner.SamplingStats]:
    return sample_problems(sampler or FakeSampler(), problems_table(), PARAMS, folder, shard_size=SHARD,
                           run_key=key, progress=False)


@pytest.fixture()
def clean(tmp_path) -> pd.DataFrame:
    return run(tmp_path / "clean")[0]


def test_fake_run_is_complete_and_ordered(clean):
    assert list(clean.columns) == CANDIDATE_COLUMNS
    assert clean["problem_id"].tolist() == [f"p{i}" for i in range(6) for _ in range(3)]
    assert clean["sample_idx"].tolist() == [0, 1, 2] * 6


def test_truncated_shard_is_resampled(tmp_path, clean, caplog):
    folder = tmp_path / "run"
    run(folder)
    bad = folder / "k" / "shard_00001.parquet"
    with open(bad, "r+b") as fh:  # like `truncate -s 100`
        fh.truncate(100)
    with pytest.raises(Exception, match="(?i)magic|parquet"):
        pd.read_parquet(bad)  # the file really is unreadable

    s = FakeSampler()
    with caplog.at_level(logging.WARNING, logger="impetus.lm.runner"):
        df, stats = run(folder, s)
    assert s.calls == [["Q2", "Q3"]]  # only the bad shard is sampled again
    assert stats.problems_reused == 4
    warn = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warn) == 1 and "corrupt shard" in warn[0] and str(bad) in warn[0]
    pd.testing.assert_frame_equal(df, clean)
    # ... and overwritten: the next run reuses everything without a warning
    caplog.clear()
    s2 = FakeSampler()
    with caplog.at_level(logging.WARNING, logger="impetus.lm.runner"):
        again, _ = run(folder, s2)
    assert s2.calls == [] and not caplog.records
    pd.testing.assert_frame_equal(again, clean)


def test_other_shards_parquet_in_place_is_resampled(tmp_path, clean, caplog):
    folder = tmp_path / "run"
    run(folder)
    shutil.copy(folder / "k" / "shard_00000.parquet", folder / "k" / "shard_00002.parquet")
    s = FakeSampler()
    with caplog.at_level(logging.WARNING, logger="impetus.lm.runner"):
        df, _ = run(folder, s)
    assert s.calls == [["Q4", "Q5"]]
    warn = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warn) == 1
    assert "shard_00002.parquet" in warn[0] and "problem ids differ from the manifest" in warn[0]
    assert "'p0'" in warn[0] and "'p4'" in warn[0]  # names the unexpected and the missing ids
    pd.testing.assert_frame_equal(df, clean)
    assert not df.duplicated(["problem_id", "sample_idx"]).any()


@pytest.mark.parametrize("deleted", ["json", "parquet"])
def test_shard_with_a_deleted_half_is_resampled_with_a_warning(tmp_path, clean, caplog, deleted):
    folder = tmp_path / "run"
    run(folder)
    stem = folder / "k" / "shard_00002"
    stem.with_suffix(f".{deleted}").unlink()
    s = FakeSampler()
    with caplog.at_level(logging.WARNING, logger="impetus.lm.runner"):
        df, stats = run(folder, s)
    assert s.calls == [["Q4", "Q5"]] and stats.problems_reused == 4
    warn = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    kept = stem.with_suffix(".parquet" if deleted == "json" else ".json")
    assert len(warn) == 1 and str(kept) in warn[0] and f"no {stem.with_suffix('.' + deleted).name}" in warn[0]
    pd.testing.assert_frame_equal(df, clean)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="impetus.lm.runner"):
        run(folder)  # rewritten whole: reused without a word
    assert not caplog.records


@pytest.mark.parametrize(
    "damage, reason",
    [(lambda d: d.iloc[:-1], "5 rows, expected 2 problems x n=3 = 6"),
     (lambda d: d.assign(sample_idx=[0, 1, 1, 0, 1, 2]), "duplicate (problem_id, sample_idx)"),
     (lambda d: d.assign(sample_idx=d["sample_idx"] + 1), "sample_idx outside 0..2"),
     (lambda d: d.drop(columns=["completion"]), "missing columns ['completion']")],
)
def test_inconsistent_shard_is_resampled(tmp_path, clean, caplog, damage, reason):
    folder = tmp_path / "run"
    run(folder)
    pq = folder / "k" / "shard_00000.parquet"
    damage(pd.read_parquet(pq)).to_parquet(pq, index=False)
    s = FakeSampler()
    with caplog.at_level(logging.WARNING, logger="impetus.lm.runner"):
        df, _ = run(folder, s)
    assert s.calls == [["Q0", "Q1"]]
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert reason in msg and str(pq) in msg
    pd.testing.assert_frame_equal(df, clean)


def test_shuffled_but_complete_shard_is_reused_in_order(tmp_path, clean):
    folder = tmp_path / "run"
    run(folder)
    pq = folder / "k" / "shard_00001.parquet"
    pd.read_parquet(pq).iloc[::-1].to_parquet(pq, index=False)
    s = FakeSampler()
    df, _ = run(folder, s)
    assert s.calls == []
    pd.testing.assert_frame_equal(df, clean)


class ShortSampler(FakeSampler):
    """A buggy backend: drops the last generation of every prompt."""

    def generate(self, prompts, params, seeds, progress=None):
        return [row[:-1] for row in super().generate(prompts, params, seeds, progress)]


def test_sampler_returning_too_few_rows_fails_and_writes_nothing(tmp_path):
    with pytest.raises(IncompleteCandidatesError, match=r"returned a bad shard 0: 4 rows, expected 2 problems x n=3"):
        run(tmp_path, ShortSampler())
    assert not list((tmp_path / "k").glob("*.parquet")) and not list((tmp_path / "k").glob("*.json"))


def test_check_complete_names_the_problem(clean):
    check_complete(clean, [f"p{i}" for i in range(6)], 3)
    with pytest.raises(IncompleteCandidatesError, match=r"incomplete for 7 problems x n=3: .*missing, e.g. \['p6'\]"):
        check_complete(clean, [f"p{i}" for i in range(7)], 3)
    with pytest.raises(IncompleteCandidatesError, match="duplicate"):
        check_complete(pd.concat([clean.iloc[:-1], clean.iloc[:1]]), [f"p{i}" for i in range(6)], 3)


def test_threads_share_shards_each_sampled_once(tmp_path, caplog):
    """flock locks belong to an open file description, so two threads opening the lock file
    separately exclude each other like two processes do."""
    started = threading.Event()
    a, b = FakeSampler(delay=0.3, on_call=started), FakeSampler(delay=0.3)
    results: dict[str, pd.DataFrame] = {}

    def go(tag: str, s: FakeSampler) -> None:
        results[tag] = run(tmp_path, s)[0]

    with caplog.at_level(logging.INFO, logger="impetus.lm.runner"):
        ta = threading.Thread(target=go, args=("a", a))
        ta.start()
        assert started.wait(10)  # A holds shard 0's lock and is sampling it
        tb = threading.Thread(target=go, args=("b", b))
        tb.start()
        ta.join(30)
        tb.join(30)
    sampled = sorted(p for s in (a, b) for call in s.calls for p in call)
    assert sampled == [f"Q{i}" for i in range(6)]  # every problem sampled exactly once in total
    assert any("waiting for lock" in r.getMessage() and "shard_00000.lock" in r.getMessage()
               for r in caplog.records)
    pd.testing.assert_frame_equal(results["a"], results["b"])


def test_two_processes_share_shards_each_sampled_once(tmp_path):
    child = Path(__file__).with_name("_lock_child.py")
    log = tmp_path / "calls.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, str(child), str(tmp_path / "run"), str(log),
                               str(tmp_path / f"out{i}.parquet")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(log.read_text().split()) == [f"Q{i}" for i in range(6)]
    out0, out1 = (pd.read_parquet(tmp_path / f"out{i}.parquet") for i in range(2))
    pd.testing.assert_frame_equal(out0, out1)
    assert "waiting for lock" in "".join(outs)
    manifest = json.loads((tmp_path / "run" / "k" / "shard_00002.json").read_text())
    assert manifest["problem_ids"] == ["p4", "p5"]
