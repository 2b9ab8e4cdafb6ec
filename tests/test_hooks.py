"""MlflowStoreCheckHook: a store that cannot be opened or written fails at once, with a fix."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from impetus.framework import hooks
from impetus.framework.hooks import MlflowStoreCheckHook, MlflowStoreError, check_tracking_store


def _root_writes_anyway(folder: Path) -> bool:
    """True when chmod does not stop this user (root) from writing in ``folder``."""
    try:
        (folder / ".probe").write_text("x")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


def test_sqlite_store_is_created_and_opened(tmp_path):
    uri = f"sqlite:///{tmp_path}/runs/mlflow.db"
    check_tracking_store(uri, artifact_location=str(tmp_path / "artifacts"))
    assert (tmp_path / "runs" / "mlflow.db").exists()
    assert (tmp_path / "artifacts").is_dir()
    assert not [p for p in (tmp_path / "runs").iterdir() if p.name.startswith(".impetus")]


def test_unopenable_store_fails_with_clear_message(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(MlflowStoreError, match="mlflow_tracking_uri") as err:
        check_tracking_store(f"sqlite:///{blocker}/sub/mlflow.db")
    assert f"MLflow store folder {blocker}/sub is not writable" in str(err.value)


def test_read_only_db_file_fails_before_mlflow_opens_it(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    check_tracking_store(uri)  # creates the database
    db = tmp_path / "mlflow.db"
    real_access = os.access
    # Root may write a chmod 444 file, so the read-only bit is simulated where the check reads it.
    monkeypatch.setattr(
        hooks.os, "access", lambda p, mode: False if Path(p) == db else real_access(p, mode)
    )
    with pytest.raises(MlflowStoreError) as err:
        check_tracking_store(uri)
    message = str(err.value)
    assert f"MLflow database {db} is read-only" in message
    assert "chmod u+w" in message and "server.mlflow_tracking_uri" in message
    assert err.value.__cause__ is not None and "sqlalchemy" not in type(err.value.__cause__).__module__


def test_chmod_read_only_store_fails_for_a_non_root_user(tmp_path):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    check_tracking_store(uri)
    store = tmp_path / "store"
    (store / "mlflow.db").chmod(0o444)
    store.chmod(0o555)
    try:
        if _root_writes_anyway(store):
            pytest.skip("running as root: chmod does not make the store read-only")
        with pytest.raises(MlflowStoreError, match=f"MLflow store folder {store} is not writable"):
            check_tracking_store(uri)
    finally:
        store.chmod(0o755)


def test_unwritable_artifact_location_fails_with_its_path(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the artifact folder should go")
    with pytest.raises(MlflowStoreError) as err:
        check_tracking_store(
            f"sqlite:///{tmp_path}/mlflow.db", artifact_location=(blocker / "artifacts").as_uri()
        )
    message = str(err.value)
    assert f"MLflow artifact folder {blocker / 'artifacts'} is not writable" in message
    assert "create_experiment_kwargs.artifact_location" in message


def test_existing_experiment_artifact_folder_is_checked(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    MlflowClient(uri).create_experiment("impetus", artifact_location=str(blocker / "old"))
    check_tracking_store(uri, artifact_location=str(tmp_path / "new"))  # no name: not looked up
    with pytest.raises(MlflowStoreError, match=f"MLflow artifact folder {blocker / 'old'}"):
        check_tracking_store(uri, artifact_location=str(tmp_path / "new"), experiment_name="impetus")


def test_remote_artifact_location_is_not_probed(tmp_path, monkeypatch):
    import impetus.framework.hooks as hooks

    probed: list = []
    real = hooks._require_writable_dir
    monkeypatch.setattr(hooks, "_require_writable_dir", lambda folder, *a: (probed.append(folder), real(folder, *a)))
    check_tracking_store(f"sqlite:///{tmp_path}/mlflow.db", artifact_location="s3://bucket/runs")
    assert probed == [tmp_path]  # the sqlite folder only; nothing named after the s3 URI
    assert hooks._local_path("s3://bucket/runs") is None


def test_hook_resolves_relative_artifact_location_against_the_project(tmp_path):
    (tmp_path / "mlruns").write_text("a file, so mlruns/artifacts cannot be created")
    conf = {
        "server": {"mlflow_tracking_uri": f"sqlite:///{tmp_path}/db/mlflow.db"},
        "tracking": {
            "experiment": {
                "name": "impetus",
                "create_experiment_kwargs": {"artifact_location": "mlruns/artifacts"},
            }
        },
    }
    context = SimpleNamespace(config_loader={"mlflow": conf}, project_path=tmp_path)
    with pytest.raises(MlflowStoreError, match=f"{tmp_path / 'mlruns' / 'artifacts'}"):
        MlflowStoreCheckHook().after_context_created(context)
