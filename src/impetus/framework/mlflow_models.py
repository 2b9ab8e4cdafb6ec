"""A Kedro dataset that logs a learned energy (EBM) as an MLflow 3 model of the active run.

Why not ``kedro_mlflow.io.models.MlflowModelTrackingDataset`` (i.e. ``mlflow.pytorch.log_model``):
``Model.log`` copies every step-0 metric the run already holds onto the new LoggedModel (its
``log_model_metrics_for_step``), so each EBM carried the earlier stages' metrics and none of its
own. Here the LoggedModel is created, filled, linked to the run and registered with the client
API, and only the given best-epoch metrics are logged with its ``model_id``. The weights go in a
``torch.export`` "pt2" archive (no pickle). When export fails the save fails too, unless the
data carries ``allow_pickle=True`` (the run's ``scorer.allow_pickle``): then the model is logged
in pickle format with a warning, since loading a pickle can run code.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from kedro.io.core import AbstractDataset, DatasetError
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
from mlflow.models import Model, ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.types import Schema, TensorSpec
from torch import nn

from impetus.learned.ensemble import EnsembleEBM
from impetus.learned.models import LatentEBM, TextEBM
from impetus.learned.persist import ebm_from_dict, ebm_to_dict

__all__ = ["MlflowEBMDataset", "FORMAT_TAG"]

logger = logging.getLogger(__name__)

#: LoggedModel / model-version tag saying how the weights are stored: "pt2" or "pickle".
FORMAT_TAG = "impetus.serialization_format"


def _example_and_signature(model: nn.Module) -> tuple[tuple[np.ndarray, ...], ModelSignature]:
    """A tiny input built from the model's config (pt2 traces ``forward`` on it) and its signature.

    -1 marks the dims torch.export may keep dynamic (batch; sequence length for TextEBM), so the
    archive accepts other batch sizes; the example uses batch 2 because size-1 dims get specialized.
    An ensemble takes its members' inputs.
    """
    kind = model.members[0] if isinstance(model, EnsembleEBM) else model
    if isinstance(kind, TextEBM):
        c = model.config
        ids = np.random.default_rng(0).integers(0, c.vocab_size, size=(2, min(8, c.max_len)), dtype=np.int64)
        example = (ids, np.ones_like(ids))
        inputs = Schema([TensorSpec(np.dtype(np.int64), (-1, -1), "input_ids"),
                         TensorSpec(np.dtype(np.int64), (-1, -1), "attention_mask")])
    elif isinstance(kind, LatentEBM):
        example = (np.zeros((2, model.config.input_dim), dtype=np.float32),)
        inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, model.config.input_dim), "h")])
    else:
        raise DatasetError(f"MlflowEBMDataset logs TextEBM or LatentEBM, got {type(model).__name__}")
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1,), "energy")])
    return example, ModelSignature(inputs=inputs, outputs=outputs)


def _clean_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Finite numbers only: the node leaves out what it could not measure, never fake a 0."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


class MlflowEBMDataset(AbstractDataset[dict[str, Any], nn.Module]):
    """Save ``{"model": TextEBM | LatentEBM, "metrics": {name: float}, "allow_pickle": bool}`` as an MLflow model.

    On save (inside the run kedro-mlflow started): a LoggedModel named ``name`` in pt2 format
    (if ``torch.export`` fails: pickle when ``allow_pickle``, else a DatasetError), linked to the run as an output, registered as
    ``registered_model_name`` and carrying exactly ``metrics``. Load returns the model of the
    last save, else the newest registered version (tests and notebooks only).

    Args:
        name: LoggedModel name, e.g. ``latent_ebm``.
        registered_model_name: model-registry name, e.g. ``impetus-latent-ebm``; None skips it.
        save_args: extra keyword arguments for ``mlflow.pytorch.save_model`` (e.g. ``pip_requirements``).
        load_args: extra keyword arguments for ``mlflow.pytorch.load_model``.
        metadata: ignored by Kedro; for plugins.
    """

    def __init__(self, name: str, registered_model_name: str | None = None,
                 save_args: dict[str, Any] | None = None, load_args: dict[str, Any] | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        self._name = name
        self._registered_model_name = registered_model_name
        self._save_args = dict(save_args or {})
        self._load_args = dict(load_args or {})
        self.metadata = metadata
        # kedro-mlflow's hook flips this on every "Mlflow*" dataset to switch logging off.
        self._logging_activated = True
        self.model_uri: str | None = None
        self.serialization_format: str | None = None

    def _describe(self) -> dict[str, Any]:
        return {"name": self._name, "registered_model_name": self._registered_model_name,
                "model_uri": self.model_uri, "serialization_format": self.serialization_format}

    def _save_local(self, model: nn.Module, path: Path, mlflow_model: Model, allow_pickle: bool = False) -> str:
        """Write the MLflow model directory; return the format used ("pt2", else "pickle" if allowed)."""
        example, signature = _example_and_signature(model)

        def save(fmt: str) -> None:
            # pt2 reads back only the graph and tensors; pickle needs impetus to rebuild the class.
            reqs = [f"torch=={torch.__version__.split('+')[0]}"] + (["impetus"] if fmt == "pickle" else [])
            mlflow.pytorch.save_model(model, str(path), mlflow_model=mlflow_model, signature=signature,
                                      input_example=example if len(example) > 1 else example[0],
                                      serialization_format=fmt, **{"pip_requirements": reqs, **self._save_args})

        try:
            save("pt2")
            return "pt2"
        except Exception as err:  # torch.export fails with many error types
            reason = (str(err).splitlines() or [""])[0]
            if not allow_pickle:
                raise DatasetError(
                    f"{self._name}: torch.export failed ({type(err).__name__}: {reason}), and logging it "
                    "in pickle format instead is refused (loading a pickle can run code). Set "
                    "scorer.allow_pickle=true (e.g. --params scorer.allow_pickle=true) to log it as a pickle."
                ) from err
            logger.warning("%s: torch.export failed (%s: %s); logging it in pickle format, which needs "
                           "MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true to load", self._name,
                           type(err).__name__, reason)
        shutil.rmtree(path, ignore_errors=True)
        mlflow_model.flavors.clear()  # the failed attempt may have added its flavor
        save("pickle")
        return "pickle"

    def save(self, data: dict[str, Any]) -> None:
        """Log, link, register and annotate the model; without an active run, warn and do nothing."""
        if not self._logging_activated:
            return
        run = mlflow.active_run()
        if run is None:
            logger.warning("%s: no active MLflow run, model not logged", self._name)
            return
        run_id, client = run.info.run_id, MlflowClient()
        # A CPU eval-mode copy: export must not trace dropout, and the caller's module stays as is.
        record = ebm_to_dict(data["model"])
        model = ebm_from_dict(record)
        params = {"kind": record["kind"], **{k: str(v) for k, v in record["config"].items()}}
        if "members" in record:  # an ensemble: how many members of which kind
            params |= {"member_kind": record["member_kind"], "members": str(len(record["members"]))}
        # No run params and no copied run metrics: only what describes this model.
        logged = client.create_logged_model(run.info.experiment_id, name=self._name, source_run_id=run_id,
                                            tags=resolve_tags(), params=params, model_type="ebm")
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model"
                mlflow_model = Model(artifact_path=logged.artifact_location, run_id=run_id,
                                     model_uuid=logged.model_id, model_id=logged.model_id)
                fmt = self._save_local(model, path, mlflow_model, bool(data.get("allow_pickle", False)))
                client.log_model_artifacts(logged.model_id, str(path))
            client.set_logged_model_tags(logged.model_id, {FORMAT_TAG: fmt})
        except BaseException:
            client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
            raise
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        # Client calls only: fluent mlflow.log_metric(s) links a metric to every model the cached
        # active run lists as a step-0 output (Model.log adds it there), and with model_id= it
        # also records the model as a run *input*; neither should happen here.
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0, model_id=logged.model_id, run_id=run_id)
                   for k, v in _clean_metrics(data.get("metrics") or {}).items()]
        if metrics:
            client.log_batch(run_id, metrics=metrics)
        if self._registered_model_name:
            mlflow.register_model(f"models:/{logged.model_id}", self._registered_model_name,
                                  tags={FORMAT_TAG: fmt})
        self.model_uri, self.serialization_format = f"models:/{logged.model_id}", fmt
        logger.info("%s: logged as %s (%s)", self._name, self.model_uri, fmt)

    def load(self) -> nn.Module:
        """The model of the last save, else the newest version of ``registered_model_name``.

        A pt2 model comes back as the exported graph (a ``torch.fx.GraphModule`` with the same
        ``forward`` inputs, no ``.config``); a pickled one needs MLFLOW_ALLOW_PICKLE_DESERIALIZATION.
        """
        uri = self.model_uri
        if uri is None and self._registered_model_name:
            versions = MlflowClient().search_model_versions(
                f"name = '{self._registered_model_name}'", max_results=1, order_by=["version_number DESC"])
            if versions:
                uri = f"models:/{self._registered_model_name}/{versions[0].version}"
        if uri is None:
            raise DatasetError(f"{self._name}: nothing logged yet (no save in this session and no "
                               f"registered versions of {self._registered_model_name!r})")
        return mlflow.pytorch.load_model(uri, **self._load_args)
