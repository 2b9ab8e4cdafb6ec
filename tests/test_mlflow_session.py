"""A real KedroSession with kedro-mlflow and the project hooks, over two toy pipelines.

The project's conf/ is copied into a temporary project (so mlruns/ is a scratch store) and the
pipeline registry is replaced by toy pipelines named like the real ones: this checks the hook
order against kedro-mlflow (run name, runner tag, experiment kind, FAILED on error) in seconds,
without a model.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from kedro.framework.session import KedroSession
from kedro.pipeline import Pipeline, node
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from impetus import settings
from impetus.framework.hooks import (
    END_REASON_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    MlflowRunLifecycleHook,
    MlflowStoreCheckHook,
    PARENT_RUN_ENV,
    PID_TAG,
)



class _Pipelines(dict):
    """Stands in for kedro.framework.project.pipelines (a lazy dict with set_requested)."""

    def set_requested(self, names: object) -> None:
        pass


def _seed(benchmark: dict, sampling: dict) -> int:
    return sampling["seed"]


def _problems(ingest: dict) -> pd.DataFrame:
    return pd.DataFrame({"problem_id": ["p0", "p1"], "question": ["1+1", "2+2"], "answer": ["2", "4"]})


def _fail(sampling: dict) -> None:
    raise RuntimeError("node failed on purpose")


@pytest.fixture()
def toy_project(project, monkeypatch) -> Iterator[Path]:
    """The scratch project of tests/conftest.py with toy pipelines named like the real ones."""
    toy = _Pipelines(
        v1_rerank=Pipeline([
            node(_seed, ["params:benchmark", "params:sampling"], "seed_out"),
            node(_problems, "params:ingest", "problems_eval"),
        ]),
        sampling=Pipeline([node(_fail, "params:sampling", "nothing")]),
    )
    toy["__default__"] = toy["v1_rerank"]
    monkeypatch.setattr("kedro.framework.project.pipelines", toy)
    monkeypatch.setattr("kedro.framework.session.session.pipelines", toy)
    with _use_tracking_uri(None):  # kedro-mlflow sets the global URI; put it back afterwards
        yield project


def _runs(project: Path) -> list[tuple]:
    db = sqlite3.connect(project / "mlruns" / "mlflow.db")
    try:
        return db.execute(
            "select r.name, r.status, t.value from runs r left join tags t"
            " on t.run_uuid = r.run_uuid and t.key = 'runner' order by r.start_time"
        ).fetchall()
    finally:
        db.close()


def test_settings_register_the_mlflow_hooks():
    kinds = {type(h) for h in settings.HOOKS}
    assert {MlflowStoreCheckHook, MlflowRunLifecycleHook} <= kinds


def test_session_run_is_named_tagged_and_failed_on_error(toy_project):
    project = toy_project
    with KedroSession.create(project_path=project, env="test") as session:
        session.run(pipeline_names=["v1_rerank"])
    with KedroSession.create(project_path=project) as session:
        with pytest.raises(RuntimeError, match="on purpose"):
            session.run(pipeline_names=["sampling"])

    assert _runs(project) == [
        ("v1_rerank · test · arith · smollm2-135m-instruct · data seed 0 · sampling seed 0", "FINISHED",
         "SequentialRunner"),
        ("sampling · local · arith · smollm2-135m-instruct · data seed 0 · sampling seed 0", "FAILED",
         "SequentialRunner"),
    ]
    db = sqlite3.connect(project / "mlruns" / "mlflow.db")
    kind = db.execute("select value from experiment_tags where key = ?", (EXPERIMENT_KIND_TAG,))
    assert kind.fetchall() == [(EXPERIMENT_KIND,)]
    reasons = db.execute("select value from tags where key = ?", (END_REASON_TAG,)).fetchall()
    assert reasons == [("RuntimeError: node failed on purpose",)]
    pids = db.execute("select value from tags where key = ?", (PID_TAG,)).fetchall()
    assert pids == [(str(os.getpid()),)] * 2
    db.close()


def test_session_run_logs_its_problems_and_joins_its_parent(toy_project, monkeypatch):
    """The replication driver's contract: a data seed in the name, a parent from the environment,
    and the problems the pipeline saved as a dataset input."""
    from mlflow.tracking import MlflowClient

    project = toy_project
    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    with KedroSession.create(project_path=project, env="test") as session:
        session.load_context()  # creates the store and the experiment
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("impetus").experiment_id
    parent = client.create_run(experiment_id, run_name="replicate")
    monkeypatch.setenv(PARENT_RUN_ENV, parent.info.run_id)
    params = "benchmark.options.arith.seed=7,ingest.seed=7"
    with KedroSession.create(project_path=project, env="test", runtime_params=_parse(params)) as session:
        session.run(pipeline_names=["v1_rerank"])
    (child,) = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert child.info.run_name == "v1_rerank · test · arith · smollm2-135m-instruct · data seed 7 · sampling seed 0"
    (logged,) = child.inputs.dataset_inputs
    assert logged.dataset.name == "arith eval · data seed 7"
    assert {t.key: t.value for t in logged.tags} == {"mlflow.data.context": "eval"}
    assert "02_intermediate/problems_eval.parquet" in logged.dataset.source
    assert '"num_rows": 2' in logged.dataset.profile


def _parse(text: str) -> dict:
    """``a.b=1,c=2`` as the nested dict ``kedro run --params`` makes of it."""
    from kedro.framework.cli.utils import _split_params

    return _split_params(None, None, text)
