"""Project pipelines: one per stage folder (found by ``find_pipelines``) plus the composites."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# Stage order of the V1 reranking experiment; later issues append stages here.
V1_STAGES = ("ingest", "base_model", "sampling", "energies", "mining", "scorer", "rerank_eval")


def register_pipelines() -> dict[str, Pipeline]:
    """Register every stage pipeline, ``v1_rerank`` (all V1 stages) and ``__default__``."""
    pipelines = find_pipelines(raise_errors=True)
    v1 = [pipelines[name] for name in V1_STAGES if name in pipelines]
    pipelines["v1_rerank"] = sum(v1, Pipeline([]))
    pipelines["__default__"] = pipelines["v1_rerank"]
    return pipelines
