import pytest

from impetus.hooks import MlflowStoreError, check_tracking_store


def test_sqlite_store_is_created_and_opened(tmp_path):
    uri = f"sqlite:///{tmp_path}/runs/mlflow.db"
    check_tracking_store(uri)
    assert (tmp_path / "runs" / "mlflow.db").exists()


def test_unopenable_store_fails_with_clear_message(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(MlflowStoreError, match="mlflow_tracking_uri"):
        check_tracking_store(f"sqlite:///{blocker}/sub/mlflow.db")
