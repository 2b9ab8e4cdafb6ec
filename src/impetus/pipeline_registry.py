"""Project pipelines: one per folder of ``impetus/pipelines`` (found by ``find_pipelines``).

Stage folders (ingest, sampling, ...) are runnable alone; ``v1_rerank`` composes them and is the
default.
"""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline


def register_pipelines() -> dict[str, Pipeline]:
    """Register every pipeline folder and make ``v1_rerank`` the ``__default__``."""
    pipelines = find_pipelines(raise_errors=True)
    if "v1_rerank" in pipelines:
        pipelines["__default__"] = pipelines["v1_rerank"]
    return pipelines
