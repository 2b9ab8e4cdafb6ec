"""MlflowRunLifecycleHook on a scratch sqlite store: names, tags, stale and interrupted runs."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from pydantic import BaseModel

from impetus.framework import hooks
from impetus.framework.hooks import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    MlflowRunLifecycleHook,
    build_run_name,
    close_stale_runs,
    ensure_experiment_kind,
    runner_class_name,
)

PARAMS = {
    "benchmark": {"name": "arith", "source": "generated", "options": {"arith": {"seed": 7}}},
    "ingest": {"n_eval": 8, "seed": 7},
    "model": {"name_or_path": "smollm2-135m-instruct", "dtype": "float32"},
    "sampling": {"n": 4, "seed": 0},
}
NAME = "v1_rerank · large · arith · smollm2-135m-instruct · data seed 7 · sampling seed 0"
RUN_PARAMS = {
    "pipeline_names": ["v1_rerank"],
    "env": "large",
    "runner": "<kedro.runner.sequential_runner.SequentialRunner object at 0x7f3a2c1b9d50>",
}


PROBLEMS = pd.DataFrame({"problem_id": ["a", "b", "c"], "question": ["1+1", "2+2", "3+3"], "answer": ["2", "4", "6"]})


class _Catalog:
    def load(self, name: str) -> dict | pd.DataFrame:
        assert name in ("parameters", "problems_eval"), name
        return PARAMS if name == "parameters" else PROBLEMS

    def get(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(_filepath=f"data/02_intermediate/{name}.parquet")


@pytest.fixture()
def store(tmp_path):
    """A scratch sqlite store as the global tracking URI, with experiment ``impetus``."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # MLflow's own helper restores the previous URI, unset included (set_tracking_uri would
    # leave MLFLOW_TRACKING_URI pointing at a deleted folder for later tests).
    with _use_tracking_uri(uri):
        client = MlflowClient(uri)
        experiment_id = client.create_experiment("impetus", artifact_location=str(tmp_path / "a"))
        mlflow.set_experiment(experiment_id=experiment_id)
        yield client, experiment_id
        while mlflow.active_run():
            mlflow.end_run()


@pytest.fixture()
def hook():
    hook = MlflowRunLifecycleHook()
    yield hook
    hook.disarm()  # never leave a SIGTERM handler or atexit callback in the pytest process


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_run_name_from_params():
    assert build_run_name("v1_rerank", "large", PARAMS) == NAME
    hub = {**PARAMS, "model": {"name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"}, "sampling": {"seed": 3}}
    assert build_run_name("sampling", "local", hub) == (
        "sampling · local · arith · Qwen2.5-0.5B-Instruct · data seed 7 · sampling seed 3"
    )
    split_differs = {**PARAMS, "ingest": {"seed": 2}}
    assert "· data seed 7/2 · sampling seed 0" in build_run_name("v1_rerank", "base", split_differs)
    flat = {"benchmark.name": "svamp", "model.name_or_path": "/models/tiny.gguf"}
    assert build_run_name("v1_rerank", "svamp", flat) == "v1_rerank · svamp · svamp · tiny"
    # SVAMP's problems are fixed (no generator seed): the split seed is the data seed.
    svamp = {**PARAMS, "benchmark": {"name": "svamp", "options": {"arith": {"seed": 7}}}, "ingest": {"seed": 4}}
    assert "· svamp · smollm2-135m-instruct · data seed 4 · sampling seed 0" in build_run_name("x", "y", svamp)
    bbh = {"benchmark": {"name": "bbh:navigate", "options": {"bbh": {"seed": 5}}}, "ingest": {"seed": 5}}
    assert build_run_name("x", "y", bbh) == "x · y · bbh:navigate · data seed 5"
    assert build_run_name("ingest", "base", {}) == "ingest · base"


def test_run_name_from_typed_params():
    """Kedro hands over blocks as the pydantic models the nodes are annotated with."""

    class Model(BaseModel):
        name_or_path: str

    typed = {
        "benchmark": SimpleNamespace(name="svamp"),
        "model": Model(name_or_path="HuggingFaceTB/SmolLM2-360M-Instruct"),
        "ingest": SimpleNamespace(seed=1),
        "sampling": SimpleNamespace(seed=3),
    }
    assert build_run_name("v1_rerank", "local", typed) == (
        "v1_rerank · local · svamp · SmolLM2-360M-Instruct · data seed 1 · sampling seed 3"
    )


def test_runner_tag_is_the_class_name():
    assert runner_class_name(RUN_PARAMS["runner"]) == "SequentialRunner"
    assert runner_class_name("<kedro.runner.ParallelRunner object at 0xABC>") == "ParallelRunner"
    assert runner_class_name("ThreadRunner") == "ThreadRunner"


def test_experiment_kind_is_set_idempotently_and_experiment_created(store):
    client, experiment_id = store
    assert ensure_experiment_kind(client, "impetus") == experiment_id
    assert ensure_experiment_kind(client, "impetus") == experiment_id
    assert client.get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert EXPERIMENT_KIND == "custom_model_development"  # the value the MLflow 3 UI knows
    new_id = ensure_experiment_kind(client, "fresh")
    assert client.get_experiment(new_id).name == "fresh"
    assert client.get_experiment(new_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_hook_names_and_tags_the_run_kedro_mlflow_started(store, hook):
    client, experiment_id = store
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, "genai_development")
    run = mlflow.start_run(run_name="v1_rerank")  # what kedro-mlflow's before_pipeline_run does
    mlflow.set_tag("runner", RUN_PARAMS["runner"])
    hook.before_pipeline_run(RUN_PARAMS, None, _Catalog())
    logged = client.get_run(run.info.run_id)
    assert logged.info.run_name == NAME
    assert logged.data.tags["mlflow.runName"] == logged.info.run_name
    assert logged.data.tags["runner"] == "SequentialRunner"
    assert logged.data.tags[hooks.PID_TAG] == str(__import__("os").getpid())
    assert logged.data.tags[hooks.HOST_TAG] == socket.gethostname()
    assert client.get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_a_name_set_in_mlflow_yml_is_kept(store, hook):
    client, _ = store
    run = mlflow.start_run(run_name="my-ablation")
    hook.before_pipeline_run({**RUN_PARAMS, "env": None}, None, _Catalog())
    assert client.get_run(run.info.run_id).info.run_name == "my-ablation"


def test_running_run_with_dead_pid_is_marked_killed(store, hook):
    client, experiment_id = store
    host = socket.gethostname()
    dead = client.create_run(experiment_id, tags={hooks.PID_TAG: str(_dead_pid()), hooks.HOST_TAG: host})
    alive = client.create_run(experiment_id, tags={hooks.PID_TAG: "1", hooks.HOST_TAG: host})
    elsewhere = client.create_run(experiment_id, tags={hooks.PID_TAG: "999999", hooks.HOST_TAG: "other"})
    untagged = client.create_run(experiment_id)
    current = mlflow.start_run(run_name="v1_rerank")
    hook.before_pipeline_run(RUN_PARAMS, None, _Catalog())

    def status(run):
        return client.get_run(run.info.run_id).info.status

    assert status(dead) == "KILLED"
    assert "was gone" in client.get_run(dead.info.run_id).data.tags[hooks.END_REASON_TAG]
    assert client.get_run(dead.info.run_id).info.end_time is not None
    assert [status(r) for r in (alive, elsewhere, untagged, current)] == ["RUNNING"] * 4


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_reused_pid_counts_as_gone(store):
    client, experiment_id = store
    tags = {**hooks.process_tags(), hooks.PID_START_TAG: "1"}  # our pid, but an older process
    reused = client.create_run(experiment_id, tags=tags)
    live = client.create_run(experiment_id, tags=hooks.process_tags())
    assert close_stale_runs(client, experiment_id) == [reused.info.run_id]
    assert client.get_run(live.info.run_id).info.status == "RUNNING"


def test_pipeline_error_marks_the_run_failed(store, hook):
    client, _ = store
    run = mlflow.start_run(run_name="v1_rerank")
    hook.before_pipeline_run(RUN_PARAMS, None, _Catalog())
    hook.on_pipeline_error(ValueError("bad shard"), RUN_PARAMS, None, None)
    logged = client.get_run(run.info.run_id)
    assert logged.info.status == "FAILED"
    assert logged.data.tags[hooks.END_REASON_TAG] == "ValueError: bad shard"


def test_finished_run_stays_finished_and_logs_the_runs_table_link(store, hook, caplog):
    client, experiment_id = store
    run = mlflow.start_run(run_name="v1_rerank")
    hook.before_pipeline_run(RUN_PARAMS, None, _Catalog())
    mlflow.end_run()  # what kedro-mlflow's after_pipeline_run does
    with caplog.at_level(logging.INFO, logger="impetus.framework.hooks"):
        hook.after_pipeline_run(RUN_PARAMS, None, None)
    link = f"http://127.0.0.1:5000/#/experiments/{experiment_id}?workflowType=machine_learning"
    assert link in caplog.text
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    hook._at_exit()  # disarmed: a late exit must not turn a finished run KILLED
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


def test_child_run_is_linked_to_the_parent_named_in_the_environment(store, hook, monkeypatch):
    client, experiment_id = store
    parent = client.create_run(experiment_id, run_name="replicate")
    monkeypatch.setenv(hooks.PARENT_RUN_ENV, parent.info.run_id)
    run = mlflow.start_run(run_name="v1_rerank")
    hook.before_pipeline_run(RUN_PARAMS, None, _Catalog())
    assert client.get_run(run.info.run_id).data.tags[hooks.PARENT_RUN_TAG] == parent.info.run_id
    children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert [c.info.run_id for c in children] == [run.info.run_id]
    mlflow.end_run()
    monkeypatch.delenv(hooks.PARENT_RUN_ENV)
    alone = mlflow.start_run(run_name="v1_rerank")
    hook.before_pipeline_run(RUN_PARAMS, None, _Catalog())
    assert hooks.PARENT_RUN_TAG not in client.get_run(alone.info.run_id).data.tags


class _Pipeline:
    def __init__(self, inputs: set[str]) -> None:
        self._inputs = inputs

    def inputs(self) -> set[str]:
        return self._inputs


def _dataset_inputs(client, run_id: str) -> dict[str, tuple]:
    inputs = client.get_run(run_id).inputs.dataset_inputs
    return {
        {t.key: t.value for t in d.tags}["mlflow.data.context"]: (d.dataset.name, d.dataset.digest, d.dataset.source)
        for d in inputs
    }


def test_problems_are_logged_as_dataset_inputs(store, hook):
    """problems_eval read from an earlier run (a pipeline input) and problems_train saved by this one."""
    client, _ = store
    run = mlflow.start_run(run_name="v1_rerank")
    hook.before_pipeline_run(RUN_PARAMS, _Pipeline({"problems_eval", "params:sampling"}), _Catalog())
    hook.after_dataset_saved("problems_train", PROBLEMS.iloc[:2], None)
    hook.after_dataset_saved("candidates_train", PROBLEMS, None)  # not a problems table: not logged
    logged = _dataset_inputs(client, run.info.run_id)
    assert sorted(logged) == ["eval", "train"]
    name, digest, source = logged["eval"]
    assert name == "arith eval · data seed 7"
    assert logged["train"][0] == "arith train · data seed 7"
    assert digest != logged["train"][1]  # different rows, different digest
    assert source.endswith("data/02_intermediate/problems_eval.parquet\"}") and "file:///" in source


def test_dataset_input_failure_does_not_fail_the_run(store, hook, caplog):
    client, _ = store
    run = mlflow.start_run(run_name="v1_rerank")
    hook.before_pipeline_run(RUN_PARAMS, _Pipeline(set()), _Catalog())
    with caplog.at_level(logging.WARNING, logger="impetus.framework.hooks"):
        hook.after_dataset_saved("problems_dev", "not a data frame", None)
    assert "log problems_dev as a dataset input" in caplog.text
    assert client.get_run(run.info.run_id).inputs.dataset_inputs == []


_CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    import mlflow
    from impetus.framework.hooks import MlflowRunLifecycleHook

    mlflow.set_tracking_uri(sys.argv[1])
    mlflow.set_experiment("impetus")
    run = mlflow.start_run(run_name="v1_rerank")
    print(run.info.run_id, flush=True)
    hook = MlflowRunLifecycleHook()
    hook.before_pipeline_run({"pipeline_names": ["v1_rerank"], "env": "local"}, None, None)
    if sys.argv[2] == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)
    elif sys.argv[2] == "interrupt":
        raise KeyboardInterrupt
    mlflow.end_run()  # finish: what kedro-mlflow's after_pipeline_run does
    hook.after_pipeline_run({}, None, None)
    """
)


@pytest.mark.parametrize(
    ("how", "status", "returncode"),
    # Python 3.11 ends an uncaught KeyboardInterrupt by re-raising SIGINT: status -2.
    [("sigterm", "KILLED", 143), ("interrupt", "KILLED", -2), ("finish", "FINISHED", 0)],
)
def test_interrupted_run_is_marked_killed_not_finished(tmp_path, how, status, returncode):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, uri, how], capture_output=True, text=True, timeout=120
    )
    assert child.returncode == returncode, child.stderr[-2000:]
    run = MlflowClient(uri).get_run(child.stdout.split()[0])
    assert run.info.status == status
    if how == "sigterm":
        assert run.data.tags[hooks.END_REASON_TAG] == "SIGTERM"
