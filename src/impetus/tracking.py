"""Small helpers for handing metrics to kedro-mlflow datasets."""

from __future__ import annotations

import math
from collections.abc import Mapping


def as_mlflow_metrics(flat: Mapping[str, float | int | None], step: int = 0) -> dict:
    """Turn ``{"name": value}`` into MlflowMetricsHistoryDataset's ``{"name": {"value", "step"}}``.

    ``None`` and NaN values are skipped: MLflow cannot store them and a missing metric is clearer
    than a fake 0 (e.g. gap closure is undefined when oracle == majority).
    """
    out = {}
    for key, value in flat.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        out[key.replace(":", "_")] = {"value": float(value), "step": step}
    return out
