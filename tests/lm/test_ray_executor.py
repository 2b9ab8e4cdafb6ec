"""``sampling.executor: ray`` on a local multi-node Ray cluster (one machine, 1-CPU nodes).

Each test compares with the ``local`` executor on the same tiny model saved to disk (the actors
load it from there, as they would load the base model): same texts, tokens and seeds, recorded
floats equal up to rounding. Faults: a worker SIGKILLed mid-shard, a node removed mid-run, the
driver SIGKILLed and rerun, and the driver interrupted (Ctrl-C). Select with ``-m ray``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from impetus.lm.executors import LocalExecutor, SamplerSpec  # noqa: E402
from impetus.lm.ray_executor import RayConfig, RayExecutor  # noqa: E402
from impetus.lm.runner import sample_problems  # noqa: E402

from .conftest import make_tiny  # noqa: E402
from .test_runner import PARAMS, _cmp, _records_close, problems_table  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

N_PROBLEMS, SHARD = 8, 2  # 4 shards: 2 per worker on a 2-node cluster
CONFIG = RayConfig(address="", workers=None, cpus_per_worker=1, gpus_per_worker=0, device=None, max_retries=3,
                   dashboard=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The tiny model as a local HF folder: what a worker loads."""
    folder = tmp_path_factory.mktemp("tiny_lm")
    model, tok = make_tiny()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def cluster():
    """Two 1-CPU nodes on this machine; the test process is the driver."""
    os.environ.setdefault("RAY_worker_niceness", "0")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, configure_logging=False, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def spec(model_dir: Path, backend: str = "hf", **kwargs) -> SamplerSpec:
    lm = {"path": str(model_dir), "name_or_path": str(model_dir), "device": "cpu", "dtype": "float32"}
    return SamplerSpec(lm, backend, record=True, kwargs=kwargs)


@pytest.fixture(scope="module")
def local_table(model_dir, tmp_path_factory):
    """The reference: the same shards sampled in this process."""
    sampler = spec(model_dir).build()
    out = tmp_path_factory.mktemp("local")
    df, _ = sample_problems(None, problems_table(N_PROBLEMS), PARAMS, out, shard_size=SHARD, run_key="k",
                            progress=False, executor=LocalExecutor(sampler))
    return df


def run_ray(folder: Path, executor: RayExecutor):
    return sample_problems(None, problems_table(N_PROBLEMS), PARAMS, folder, shard_size=SHARD, run_key="k",
                           progress=False, executor=executor)


def same_candidates(df, ref) -> None:
    assert len(df) == len(ref) == N_PROBLEMS * PARAMS.n  # nothing lost, nothing twice
    assert not df.duplicated(["problem_id", "sample_idx"]).any()
    assert _cmp(df).equals(_cmp(ref))
    _records_close(df, ref)


def wait_until(cond, seconds: float = 60.0, what: str = "condition") -> None:
    end = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def cpus_free() -> float:
    return ray.available_resources().get("CPU", 0.0)


def test_ray_equals_local_and_uses_both_nodes(cluster, model_dir, local_table, tmp_path):
    ex = RayExecutor(spec(model_dir), CONFIG)
    try:
        nodes = {w["node"] for w in ex.worker_info()}
        assert len(nodes) == 2  # one actor per node (SPREAD)
        df, stats = run_ray(tmp_path, ex)
        assert ex.describe()["ray.nodes"] == "2"
    finally:
        ex.close()
    same_candidates(df, local_table)
    assert stats.problems == N_PROBLEMS and stats.problems_reused == 0 and stats.tokens > 0
    assert len(list((tmp_path / "k").glob("shard_*.parquet"))) == N_PROBLEMS // SHARD
    # a rerun reuses every shard the driver wrote
    again, st2 = sample_problems(None, problems_table(N_PROBLEMS), PARAMS, tmp_path, shard_size=SHARD, run_key="k",
                                 progress=False, executor=LocalExecutor(spec(model_dir).build()))
    assert st2.problems_reused == N_PROBLEMS
    same_candidates(again, local_table)


def test_adaptive_waves_on_ray_equal_local(cluster, model_dir, tmp_path):
    """Adaptive N online on the actors: the stopping rule (with its closure) travels in each task,
    and the rows equal the local executor's."""
    from impetus.selection.online import WaveStop

    from .test_adaptive_online import ADAPTIVE, _texts

    words = {f"p{i}": "same" if i % 2 else None for i in range(N_PROBLEMS)}  # odd problems settle at once
    stop = WaveStop("vote_margin", 0.9, 2, lambda pid, text: words[pid])
    kw = dict(shard_size=SHARD, run_key="k", progress=False, stop=stop)
    ref, _ = sample_problems(None, problems_table(N_PROBLEMS), ADAPTIVE, tmp_path / "local",
                             executor=LocalExecutor(spec(model_dir).build()), **kw)
    ex = RayExecutor(spec(model_dir), CONFIG)
    try:
        df, _ = sample_problems(None, problems_table(N_PROBLEMS), ADAPTIVE, tmp_path / "ray", executor=ex, **kw)
    finally:
        ex.close()
    assert df.groupby("problem_id").size().tolist() == [6, 2] * (N_PROBLEMS // 2)
    assert _texts(df).equals(_texts(ref))


def test_worker_sigkilled_mid_shard_loses_nothing(cluster, model_dir, local_table, tmp_path):
    marker = tmp_path / "killed"
    ex = RayExecutor(spec(model_dir, "impetus.testing.faults:kill_once", marker=str(marker), after_steps=2), CONFIG)
    try:
        df, _ = run_ray(tmp_path / "shards", ex)
    finally:
        ex.close()
    assert marker.exists()  # a worker really died mid-shard
    same_candidates(df, local_table)


def test_second_kill_inside_the_restart_window_keeps_the_pool(cluster, model_dir, local_table, tmp_path):
    """Issue 26: the only worker killed mid-shard, then its restarted process killed while it starts.
    Ray reports the actor unavailable meanwhile; dropping it then (as before) ended the run with
    "every Ray sampler actor is dead"; the pool must wait for it instead."""
    first, second = tmp_path / "killed", tmp_path / "killed_again"
    ex = RayExecutor(spec(model_dir, "impetus.testing.faults:kill_twice", marker=str(first), marker2=str(second),
                          after_steps=2, restart_delay=1.0), RayConfig(**{**CONFIG.__dict__, "workers": 1}))
    try:
        df, _ = run_ray(tmp_path / "shards", ex)
        assert first.exists() and second.exists()  # both kills happened
        assert len(ex.worker_info()) == 1  # and the actor is up again
    finally:
        ex.close()
    same_candidates(df, local_table)


def test_node_removed_mid_run_loses_nothing(cluster, model_dir, local_table, tmp_path):
    extra = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    started = tmp_path / "started"
    ex = RayExecutor(spec(model_dir, "impetus.testing.faults:slow", delay=0.05, started_dir=str(started)),
                     RayConfig(**{**CONFIG.__dict__, "workers": 3}))
    try:
        victim = next(w["pid"] for w in ex.worker_info() if w["node"] == extra.node_id)
        out: dict = {}
        th = threading.Thread(target=lambda: out.update(r=run_ray(tmp_path / "shards", ex)))
        th.start()
        wait_until(lambda: any(started.glob(f"{victim}.*")), what="a shard on the extra node")
        cluster.remove_node(extra)
        th.join(240)
        assert "r" in out, "the run did not finish after its node was removed"
    finally:
        ex.close()
    same_candidates(out["r"][0], local_table)


DRIVER = """
import sys
from impetus.lm.executors import SamplerSpec
from impetus.lm.ray_executor import RayConfig, RayExecutor
from impetus.lm.runner import sample_problems
from tests.lm.test_runner import PARAMS, problems_table
import ray
ray.init(address=sys.argv[1], configure_logging=False, log_to_driver=False)
lm = {"path": sys.argv[2], "name_or_path": sys.argv[2], "device": "cpu", "dtype": "float32"}
spec = SamplerSpec(lm, "impetus.testing.faults:slow", True,
                   kwargs={"delay": float(sys.argv[5]), "started_dir": sys.argv[4]})
cfg = RayConfig(address="", workers=None, cpus_per_worker=1, gpus_per_worker=0, device=None, max_retries=3,
                dashboard=False)
sample_problems(None, problems_table(%d), PARAMS, sys.argv[3], shard_size=%d, run_key="k", progress=False,
                executor=RayExecutor(spec, cfg))
""" % (N_PROBLEMS, SHARD)


def start_driver(cluster, model_dir: Path, shards: Path, started: Path, delay: float) -> subprocess.Popen:
    """The driver in its own process; ``delay`` seconds per decoding step keep it busy long enough
    (4 shards of 8 steps on 2 workers) for the test to act mid-run on a loaded machine."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.Popen([sys.executable, "-c", DRIVER, cluster.address, str(model_dir), str(shards), str(started),
                             str(delay)],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_driver_killed_then_rerun_reuses_its_shards(cluster, model_dir, local_table, tmp_path):
    shards, started = tmp_path / "shards", tmp_path / "started"
    proc = start_driver(cluster, model_dir, shards, started, delay=0.3)
    try:
        wait_until(lambda: any((shards / "k").glob("shard_*.json")) or proc.poll() is not None, 120, "a shard")
        assert proc.poll() is None, proc.stdout.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    # Ray kills the actors of a dead driver: the cluster's CPUs come back.
    wait_until(lambda: cpus_free() == 2.0, 60, "the dead driver's actors to go")
    done = len(list((shards / "k").glob("shard_*.json")))
    ex = RayExecutor(spec(model_dir), CONFIG)
    try:
        df, stats = run_ray(shards, ex)
    finally:
        ex.close()
    assert stats.problems_reused == done * SHARD > 0
    same_candidates(df, local_table)


def test_ctrl_c_of_the_driver_leaves_no_actor(cluster, model_dir, tmp_path):
    shards, started = tmp_path / "shards", tmp_path / "started"
    proc = start_driver(cluster, model_dir, shards, started, delay=0.5)
    try:
        wait_until(lambda: any(started.glob("*")) or proc.poll() is not None, 120, "a shard to start")
        assert proc.poll() is None, proc.stdout.read()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    # Interrupted, not finished (usually a KeyboardInterrupt traceback; a signal inside Ray's C++
    # code may end the process otherwise): what matters is that it stops and leaves no actor.
    assert proc.returncode != 0, out[-3000:]
    assert len(list((shards / "k").glob("shard_*.json"))) < N_PROBLEMS // SHARD
    wait_until(lambda: cpus_free() == 2.0, 30, "the interrupted driver's actors to go")


def test_a_model_no_worker_can_load_fails_with_the_reason(cluster, tmp_path):
    lm = {"path": str(tmp_path / "gone"), "name_or_path": str(tmp_path / "gone"), "device": "cpu", "dtype": "float32"}
    ex = RayExecutor(SamplerSpec(lm, "hf", record=True), RayConfig(**{**CONFIG.__dict__, "workers": 1, "max_retries": 0}))
    try:
        with pytest.raises(RuntimeError, match=r"(?s)every Ray sampler actor is dead.*last error: .*gone"):
            run_ray(tmp_path / "shards", ex)
    finally:
        ex.close()
    assert not list((tmp_path / "shards" / "k").glob("shard_*.parquet"))


def test_scored_choices_on_ray_equal_local(cluster, model_dir, tmp_path):
    """``sampling.candidates: choices`` travels in the ShardTask: the actors score each problem's
    choices (one row per choice, with the extra layer's states) exactly as this process does."""
    import numpy as np
    import pandas as pd

    from impetus.energy.recorded import layer_columns

    items = pd.DataFrame({"problem_id": [f"c{i}" for i in range(6)],
                          "prompt": [f"Question: what is {i}+1?\nAnswer:" for i in range(6)],
                          "choices": [[f" {i + 1}", f" {i + 2}", " no idea"][: 2 + i % 2] for i in range(6)]})
    lm = {"path": str(model_dir), "name_or_path": str(model_dir), "device": "cpu", "dtype": "float32",
          "hidden_layers": ["mid"]}
    choice_spec = SamplerSpec(lm, "hf", record=True)
    ref, _ = sample_problems(None, items, PARAMS, tmp_path / "local", shard_size=SHARD, run_key="k", progress=False,
                             executor=LocalExecutor(choice_spec.build()))
    ex = RayExecutor(choice_spec, CONFIG)
    try:
        df, stats = sample_problems(None, items, PARAMS, tmp_path / "ray", shard_size=SHARD, run_key="k",
                                    progress=False, executor=ex)
    finally:
        ex.close()
    assert stats.problems == 6 and stats.problems_reused == 0
    assert df.groupby("problem_id", sort=False).size().tolist() == [2, 3, 2, 3, 2, 3]
    assert df["completion"].tolist() == ref["completion"].tolist() and set(df["finish_reason"]) == {"choice"}
    assert layer_columns(df.columns) == layer_columns(ref.columns) != []
    _records_close(df, ref)
    for col in layer_columns(df.columns):
        for a, b in zip(df[col], ref[col]):
            assert np.abs(np.asarray(a, float) - np.asarray(b, float)).max() < 1e-5
