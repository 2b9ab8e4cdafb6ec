"""base_model: resolve the configured LM to a cached local HF folder (converting a GGUF once)."""

from __future__ import annotations

import logging
import time
from typing import Any

from impetus.framework.config import ModelParams
from impetus.lm.loading import model_id_info, resolve_model
from impetus.lm.fp32_kernels import choose_fp32_matmul
from impetus.lm.precision import choose_dtype
from impetus.framework.tracking import as_mlflow_metrics

logger = logging.getLogger(__name__)


def prepare_base_model(model: ModelParams) -> tuple[dict[str, Any], dict]:
    """Return the ``base_lm`` record (local folder + model facts) and the stage's timing metric."""
    start = time.perf_counter()
    path = resolve_model(model.name_or_path, cache_dir=model.cache_dir, trust_remote_code=model.trust_remote_code,
                         allow_pickle=model.allow_pickle)
    seconds = time.perf_counter() - start
    facts = model_id_info(path)
    facts["weights_dtype"] = facts.pop("dtype", None)  # the cached folder's; the run's is chosen below
    dtype, reason = choose_dtype(model.dtype, model.device)
    record = {
        "name_or_path": model.name_or_path, "path": str(path), "dtype": dtype, "dtype_reason": reason,
        "device": model.device, "trust_remote_code": model.trust_remote_code, "allow_pickle": model.allow_pickle,
        **facts,
    }
    kernels, kernels_reason = choose_fp32_matmul(model.fp32_matmul, model.device)
    if kernels != "default":  # only then, so the record (and every run key) is unchanged where nothing is
        record |= {"fp32_matmul": kernels, "fp32_matmul_reason": kernels_reason}
    _tag_dtype(dtype, reason, kernels, kernels_reason)
    if model.hidden_layers:  # only when set, so the record (and every run key) is unchanged otherwise
        record["hidden_layers"] = list(model.hidden_layers)
    logger.info("Base model %s ready at %s (%.1f s); runs in %s (%s); fp32 matmuls: %s (%s)", model.name_or_path, path,
                seconds, dtype, reason, kernels, kernels_reason)
    return record, as_mlflow_metrics({"base_model/resolve_seconds": seconds})


def _tag_dtype(dtype: str, reason: str, kernels: str, kernels_reason: str) -> None:
    """Say on the MLflow run (when one is active) which dtype and fp32 kernels the LM runs with and why
    (``auto`` decides per machine, so the logged parameters alone do not say)."""
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.set_tags({"model.dtype_used": dtype, "model.dtype_reason": reason,
                         "model.fp32_matmul_used": kernels, "model.fp32_matmul_reason": kernels_reason})
