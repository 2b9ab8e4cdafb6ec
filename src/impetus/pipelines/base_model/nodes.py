"""base_model: resolve the configured LM to a cached local HF folder (converting a GGUF once)."""

from __future__ import annotations

import logging
import time
from typing import Any

from impetus.config import ModelParams, parse
from impetus.lm.loading import model_id_info, resolve_model
from impetus.tracking import as_mlflow_metrics

logger = logging.getLogger(__name__)


def prepare_base_model(model: dict[str, Any]) -> tuple[dict[str, Any], dict]:
    """Return the ``base_lm`` record (local folder + model facts) and the stage's timing metric."""
    mp = parse(ModelParams, model, "model")
    start = time.perf_counter()
    path = resolve_model(mp.name_or_path, cache_dir=mp.cache_dir, trust_remote_code=mp.trust_remote_code)
    seconds = time.perf_counter() - start
    record = {
        "name_or_path": mp.name_or_path,
        "path": str(path),
        "dtype": mp.dtype,
        "device": mp.device,
        "trust_remote_code": mp.trust_remote_code,
        **model_id_info(path),
    }
    logger.info("Base model %s ready at %s (%.1f s)", mp.name_or_path, path, seconds)
    return record, as_mlflow_metrics({"base_model/resolve_seconds": seconds})
