"""Metric flattening for MLflow, in one place.

Stage results are nested dicts; MLflow wants flat ``name -> float``. Method tables become
``<metric>/<method>`` (``accuracy/majority``) so the MLflow UI lines methods up side by side, and
kedro-mlflow's ``MlflowMetricsHistoryDataset`` wants ``{"name": {"value", "step"}}`` (or a list of
those for a per-step series such as a loss curve).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

# MLflow accepts alphanumerics, "_", "-", ".", " ", ":" and "/" in metric names.
_BAD = re.compile(r"[^\w\-. :/]")


def _ok(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and not isinstance(value, bool | str)


def as_mlflow_metrics(flat: Mapping[str, float | int | None], step: int = 0) -> dict:
    """Turn ``{"name": value}`` into MlflowMetricsHistoryDataset's ``{"name": {"value", "step"}}``.

    ``None`` and NaN values are skipped: MLflow cannot store them and a missing metric is clearer
    than a fake 0 (e.g. gap closure is undefined when oracle == majority).
    """
    out = {}
    for key, value in flat.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        out[_BAD.sub("_", key.replace(":", "_"))] = {"value": float(value), "step": step}
    return out


def method_metrics(methods: Mapping[str, Mapping[str, Any]], prefix: str = "") -> dict[str, float]:
    """``{method: {metric: value}}`` -> ``{"<prefix><metric>/<method>": value}``; CI pairs -> _lo/_hi."""
    flat: dict[str, float] = {}
    for name, m in methods.items():
        for key, value in m.items():
            if isinstance(value, (list, tuple)) and len(value) == 2:
                for suffix, v in zip(("_lo", "_hi"), value):
                    if _ok(v):
                        flat[f"{prefix}{key}{suffix}/{name}"] = float(v)
            elif _ok(value):
                flat[f"{prefix}{key}/{name}"] = float(value)
    return flat


def series_metrics(name: str, records: Iterable[Mapping[str, Any]], keys: Iterable[str], step_key: str) -> dict:
    """Per-step series (e.g. per-epoch losses) as ``{"<name>/<key>": [{"value", "step"}, ...]}``."""
    out: dict[str, list[dict]] = {}
    for rec in records:
        for key in keys:
            value = rec.get(key)
            if _ok(value):
                out.setdefault(f"{name}/{key}", []).append({"value": float(value), "step": int(rec[step_key])})
    return out
