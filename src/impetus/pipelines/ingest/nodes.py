"""Ingest: load a benchmark through the registry and cut disjoint train/eval problem tables."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from impetus.benchmarks.splits import split_problems
from impetus.config import BenchmarkParams, IngestParams, parse
from impetus.tracking import as_mlflow_metrics

logger = logging.getLogger(__name__)


def ingest_problems(
    benchmark: dict[str, Any], ingest: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Load the configured benchmark; return train, eval, few-shot exemplars and count metrics."""
    bp = parse(BenchmarkParams, benchmark, "benchmark")
    ip = parse(IngestParams, ingest, "ingest")
    bench = bp.build()
    table = bench.load(bp.source)
    train, evals = split_problems(table, ip.n_train, ip.n_eval, ip.seed)
    fewshot = bench.fewshot_rows().reset_index(drop=True)
    counts = {
        "ingest/n_loaded": len(table),
        "ingest/n_train": len(train),
        "ingest/n_eval": len(evals),
        "ingest/n_fewshot": len(fewshot),
    }
    logger.info("Ingested %s from %s: %s", bp.name, bp.source, counts)
    return train, evals, fewshot, as_mlflow_metrics(counts)
