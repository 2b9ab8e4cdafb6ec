"""Project hooks."""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)


class MlflowStoreError(RuntimeError):
    """The MLflow tracking store named in conf/<env>/mlflow.yml cannot be opened."""


class MlflowStoreCheckHook:
    """Fail at once, with a clear message, when the MLflow store cannot be opened.

    Without this, a bad ``mlflow_tracking_uri`` surfaces as a SQLAlchemy traceback deep inside
    kedro-mlflow, or worse, only when the first metric is logged after minutes of sampling.
    """

    @hook_impl(tryfirst=True)
    def after_context_created(self, context: Any) -> None:
        try:
            conf = context.config_loader["mlflow"]
        except Exception:  # no mlflow.yml in this env: kedro-mlflow's defaults apply
            return
        uri = (conf.get("server") or {}).get("mlflow_tracking_uri")
        if uri:
            check_tracking_store(uri)


def check_tracking_store(uri: str) -> None:
    """Open ``uri`` and list experiments; raise :class:`MlflowStoreError` on any failure."""
    import mlflow
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        from pathlib import Path

        db = Path(uri.removeprefix("sqlite:///"))
        try:  # a deleted mlruns/ is re-created rather than treated as an error
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MlflowStoreError(
                f"MLflow store {uri!r}: cannot create folder {db.parent} ({exc}). "
                "Change server.mlflow_tracking_uri in conf/base/mlflow.yml."
            ) from exc
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # mlflow raises many types (MlflowException, OperationalError, ...)
        raise MlflowStoreError(
            f"Cannot open the MLflow tracking store {uri!r}: {exc}. "
            "Check server.mlflow_tracking_uri in conf/base/mlflow.yml."
        ) from exc
    logger.debug("MLflow store %s is reachable (mlflow %s)", uri, mlflow.__version__)
