"""Ingest: load a benchmark through the registry and cut disjoint train/dev/eval problem tables."""

from __future__ import annotations

import logging

import pandas as pd

from impetus.benchmarks.splits import split_problems
from impetus.framework.config import BenchmarkParams, IngestParams, SamplingStageParams
from impetus.framework.tracking import as_mlflow_metrics

logger = logging.getLogger(__name__)


def ingest_problems(
    benchmark: BenchmarkParams, ingest: IngestParams, sampling: SamplingStageParams
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Load the configured benchmark; return train, dev, eval, few-shot exemplars and counts.

    Fails here, before any model is loaded, when the prompt style needs exemplars the source lacks.
    """
    bench = benchmark.build()
    table = bench.load(benchmark.source)
    fewshot = bench.fewshot_rows().reset_index(drop=True)
    if sampling.prompt_style == "fewshot" and fewshot.empty:
        raise ValueError(
            f"benchmark {benchmark.name!r} from {benchmark.source!r} has no few-shot exemplars, but "
            "sampling.prompt_style is 'fewshot'. Add the source's train.jsonl next to test.jsonl (the "
            "exemplars come from it), or set sampling.prompt_style=chat_cot."
        )
    train, dev, evals = split_problems(table, ingest.n_train, ingest.n_dev, ingest.n_eval, ingest.seed)
    counts = {
        "ingest/n_loaded": len(table), "ingest/n_train": len(train), "ingest/n_dev": len(dev),
        "ingest/n_eval": len(evals), "ingest/n_fewshot": len(fewshot),
    }
    logger.info("Ingested %s from %s: %s", benchmark.name, benchmark.source, counts)
    return train, dev, evals, fewshot, as_mlflow_metrics(counts)
