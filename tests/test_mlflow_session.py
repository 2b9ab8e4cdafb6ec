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
    PID_TAG,
)



class _Pipelines(dict):
    """Stands in for kedro.framework.project.pipelines (a lazy dict with set_requested)."""

    def set_requested(self, names: object) -> None:
        pass


def _seed(benchmark: dict, sampling: dict) -> int:
    return sampling["seed"]


def _fail(sampling: dict) -> None:
    raise RuntimeError("node failed on purpose")


@pytest.fixture()
def toy_project(project, monkeypatch) -> Iterator[Path]:
    """The scratch project of tests/conftest.py with toy pipelines named like the real ones."""
    toy = _Pipelines(
        v1_rerank=Pipeline([node(_seed, ["params:benchmark", "params:sampling"], "seed_out")]),
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
        ("v1_rerank · test · arith · smollm2-135m-instruct · seed 0", "FINISHED", "SequentialRunner"),
        ("sampling · local · arith · smollm2-135m-instruct · seed 0", "FAILED", "SequentialRunner"),
    ]
    db = sqlite3.connect(project / "mlruns" / "mlflow.db")
    kind = db.execute("select value from experiment_tags where key = ?", (EXPERIMENT_KIND_TAG,))
    assert kind.fetchall() == [(EXPERIMENT_KIND,)]
    reasons = db.execute("select value from tags where key = ?", (END_REASON_TAG,)).fetchall()
    assert reasons == [("RuntimeError: node failed on purpose",)]
    pids = db.execute("select value from tags where key = ?", (PID_TAG,)).fetchall()
    assert pids == [(str(os.getpid()),)] * 2
    db.close()
