"""sampling: N candidates per problem (resumable shards), then grading with the benchmark's rules."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from impetus.benchmarks.grading import build_prompts, grade_candidates, grading_summary
from impetus.config import BenchmarkParams, SamplingStageParams, parse
from impetus.lm.loading import load_model
from impetus.lm.runner import make_run_key, sample_problems
from impetus.lm.sampler import SamplingParams, get_sampler
from impetus.tracking import as_mlflow_metrics

logger = logging.getLogger(__name__)


def sample_candidates(
    problems: pd.DataFrame,
    fewshot: pd.DataFrame,
    base_lm: dict[str, Any],
    benchmark: dict[str, Any],
    sampling: dict[str, Any],
    split: str,
) -> tuple[pd.DataFrame, dict]:
    """Sample ``sampling.n`` completions for every problem of one split."""
    sp = parse(SamplingStageParams, sampling, "sampling")
    bp = parse(BenchmarkParams, benchmark, "benchmark")
    bench = bp.build()
    model, tok = load_model(base_lm["path"], device=base_lm["device"], dtype=base_lm["dtype"])
    prompts = build_prompts(bench, problems, fewshot, sp.prompt_style, tok)
    params = SamplingParams(
        n=sp.n,
        temperature=sp.temperature,
        top_p=sp.top_p,
        max_new_tokens=sp.max_new_tokens,
        stop=sp.stop if sp.stop is not None else bench.stop_strings(sp.prompt_style),
        batch_size=sp.batch_size,
        seed=sp.seed,
    )
    table = pd.DataFrame({"problem_id": problems["problem_id"], "prompt": prompts})
    run_key = make_run_key(base_lm["path"], params, prompts)
    sampler = get_sampler(sp.backend, model, tok)
    candidates, stats = sample_problems(
        sampler, table, params, shard_dir=sp.shard_dir, shard_size=sp.shard_size,
        run_key=run_key, progress=sp.progress,
    )
    metrics = {f"sampling/{split}/{k}": v for k, v in stats.to_dict().items()}
    logger.info("Sampled %s: %s", split, metrics)
    return candidates, as_mlflow_metrics(metrics)


def grade_split(
    candidates: pd.DataFrame, problems: pd.DataFrame, benchmark: dict[str, Any], split: str
) -> tuple[pd.DataFrame, dict]:
    """Extract and grade every candidate's answer; report accuracy, pass@N and no-answer counts."""
    bp = parse(BenchmarkParams, benchmark, "benchmark")
    graded = grade_candidates(bp.build(), candidates, problems)
    summary = grading_summary(graded)
    logger.info("Graded %s: %s", split, summary)
    return graded, as_mlflow_metrics({f"grading/{split}/{k}": v for k, v in summary.items()})
