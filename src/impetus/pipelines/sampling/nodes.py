"""sampling: prompts (built once), N candidates per problem (resumable shards), then grading."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import pandas as pd

from impetus.benchmarks.grading import (answer_locator, answer_reader, build_choice_table, build_prompt_table,
                                       grade_candidates, grade_choices, grading_summary)
from impetus.energy.recorded import is_choices
from impetus.lm import orders as choice_orders
from impetus.framework.config import BenchmarkParams, RayParams, RerankParams, SamplingStageParams
from impetus.lm.donors import item_keys
from impetus.lm.executors import LocalExecutor, SamplerSpec, ShardExecutor, executor_class
from impetus.lm.runner import make_run_key, sample_problems
from impetus.pipelines.utils import load_base_tokenizer, sampling_params
from impetus.selection.online import WaveStop, choose_stop
from impetus.framework.tracking import as_mlflow_metrics

logger = logging.getLogger(__name__)


def make_prompts(
    problems: pd.DataFrame, fewshot: pd.DataFrame, base_lm: dict[str, Any], benchmark: BenchmarkParams,
    sampling: SamplingStageParams, split: str,
) -> pd.DataFrame:
    """``prompts_{split}``: problem_id, prompt, n_prompt_tokens — the exact text every later stage
    conditions on (built here once, with the tokenizer only, before any model is loaded). With
    ``sampling.choice_orders > 1`` one row per problem and order of its choices (column ``order``);
    with ``sampling.candidates: choices`` the context of lm-eval's prompt and the scored ``choices``."""
    tok = load_base_tokenizer(base_lm)
    if sampling.candidates == "choices":
        table = build_choice_table(benchmark.build(), problems, fewshot, sampling.choice_shots)
    else:
        choice_orders.per_order(sampling.n, sampling.choice_orders)  # fail before any prompt is built
        table = build_prompt_table(benchmark.build(), problems, fewshot, sampling.prompt_style, tok,
                                   sampling.choice_orders)
    prompts = table["prompt"].tolist()
    n_tokens = [len(ids) for ids in tok(prompts)["input_ids"]] if prompts else []
    logger.info("Built %d %s prompts", len(prompts), split)
    return table.assign(n_prompt_tokens=pd.array(n_tokens, dtype="int64"))


def choose_adaptive(graded_train: pd.DataFrame, graded_dev: pd.DataFrame, sampling: SamplingStageParams,
                    rerank_eval: RerankParams) -> tuple[dict[str, Any], dict]:
    """``adaptive_stop``: the rule that stops the eval split's sampling (``sampling.adaptive``) and its
    threshold, chosen on the train and dev candidates (full N) as the offline report chooses one
    (:func:`impetus.selection.online.choose_stop`); ``{"rule": "off"}`` when off."""
    if sampling.adaptive == "off":
        return {"rule": "off"}, {}
    ap = rerank_eval.adaptive
    train_side = pd.concat([graded_train, graded_dev], ignore_index=True)
    chosen = choose_stop(train_side, sampling.adaptive, ap.wave, ap.thresholds, ap.max_drop)
    logger.info("Adaptive N online: %s", chosen)
    sel = chosen["selection"]
    return chosen, as_mlflow_metrics({"adaptive_online/threshold": chosen["threshold"],
                                      **{f"adaptive_online/selection/{k}": v for k, v in sel.items() if k != "threshold"}})


def sample_candidates(
    prompts: pd.DataFrame, problems: pd.DataFrame, base_lm: dict[str, Any], benchmark: BenchmarkParams,
    sampling: SamplingStageParams, ray: RayParams | None, adaptive_stop: dict[str, Any] | None = None, *, split: str,
) -> tuple[pd.DataFrame, dict]:
    """Sample ``sampling.n`` completions for every prompt of one split, in this process or on Ray
    (``sampling.candidates: choices``: score each problem's choices instead, one row per choice).
    ``adaptive_stop`` (eval only, from :func:`choose_adaptive`): sample in waves and stop each
    problem once the rule says its answer is settled."""
    params = sampling_params(sampling, benchmark)
    executor = make_executor(sampling, ray, base_lm)
    stop = None
    if adaptive_stop and adaptive_stop.get("rule", "off") != "off":
        stop = WaveStop(adaptive_stop["rule"], adaptive_stop["threshold"], adaptive_stop["wave"],
                        answer_reader(benchmark.build(), problems))
    items, locate = prompts[["problem_id", "prompt"]], answer_locator(benchmark.build(), problems)
    if sampling.candidates == "choices":
        # The choices travel with their shard; `n` is unused (each problem has its own count). The
        # sampling fields change no choice's row but stay in the run key and manifest.
        items, locate = prompts[["problem_id", "prompt", "choices"]], None
    if "order" in prompts.columns:  # several orders of the choices: n / k samples per (problem, order)
        n_each = choice_orders.per_order(params.n, int(prompts["order"].nunique()))
        items, params = choice_orders.as_items(prompts), replace(params, n=n_each)
        # The answer's place in the text does not depend on the order its choices were shown in.
        by_problem = locate
        locate = lambda item, text: by_problem(choice_orders.problem_of(item), text)  # noqa: E731
    run_key = make_run_key(_model_key(base_lm), params, items if "choices" in items else items["prompt"].tolist(),
                           stop.describe() if stop is not None else None)
    # A choice's row depends on its problem alone, so another split seed's runs can lend it (lm.donors).
    keys = item_keys(_model_key(base_lm), params, items, executor.record) if "choices" in items else None
    shard_size = sampling.shard_size
    if stop is not None:  # waves need several batches of rows each (WaveStop.shard_problems)
        shard_size = WaveStop.shard_problems(shard_size, params.n)
    candidates, stats = sample_problems(
        None, items, params, shard_dir=sampling.shard_dir, shard_size=shard_size, run_key=run_key,
        progress=sampling.progress, answer_span=locate, executor=executor, item_keys=keys,
        reuse_dir=sampling.reuse_dir, stop=stop,
    )
    if "order" in prompts.columns:
        candidates = choice_orders.merge(candidates, params.n)
    metrics = {f"sampling/{split}/{k}": v for k, v in stats.to_dict().items()}
    logger.info("Sampled %s: %s", split, metrics)
    return candidates, as_mlflow_metrics(metrics)


def _model_key(base_lm: dict[str, Any]) -> str:
    """The model part of the run key: its folder, the extra recorded layers when there are any, the
    dtype it runs in unless fp32 (a bf16 run's candidates differ; fp32 keys stay as they were), and
    the fp32 matmul kernels unless torch's own (oneDNN rounds differently, so near-tied tokens can flip)."""
    layers, dtype = base_lm.get("hidden_layers"), base_lm.get("dtype", "float32")
    kernels = base_lm.get("fp32_matmul", "default")
    return (base_lm["path"] + (f"|layers={layers}" if layers else "") + (f"|dtype={dtype}" if dtype != "float32" else "")
            + (f"|fp32_matmul={kernels}" if kernels != "default" else ""))


_EXECUTORS: dict[tuple, ShardExecutor] = {}


def make_executor(sampling: SamplingStageParams, ray: RayParams | None, base_lm: dict[str, Any]) -> ShardExecutor:
    """The configured executor. A Ray executor is kept for the process, so its actors load the model
    once for all three splits; the local one loads the model here (the driver is the worker)."""
    spec = SamplerSpec(dict(base_lm), sampling.backend, sampling.record)  # one recipe for both executors
    if sampling.executor == "local":
        return LocalExecutor(spec.build())
    if ray is None:
        raise ValueError(f"sampling.executor={sampling.executor!r} needs the `ray` parameter block")
    key = (sampling.executor, repr(spec), ray)
    if key not in _EXECUTORS:
        _EXECUTORS[key] = executor_class(sampling.executor)(spec, ray.to_core(), metadata=_tracking_ids())
    _tag_run(_EXECUTORS[key].describe())  # every call: a later run in this process reuses the actors
    return _EXECUTORS[key]


def _tracking_ids() -> dict[str, str]:
    """The MLflow run this sampling belongs to (shown as the Ray job's metadata in its dashboard)."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        return {"impetus": "sampling"}
    return {"impetus": "sampling", "mlflow_run_id": run.info.run_id, "mlflow_experiment_id": run.info.experiment_id,
            "mlflow_tracking_uri": mlflow.get_tracking_uri()}


def _tag_run(tags: dict[str, str]) -> None:
    """Tag the MLflow run with the Ray job id, nodes, workers and dashboard (if a run is active)."""
    import mlflow

    if tags and mlflow.active_run() is not None:
        mlflow.set_tags(tags)
    logger.info("Sampling on Ray: %s", tags)


def grade_split(
    candidates: pd.DataFrame, problems: pd.DataFrame, benchmark: BenchmarkParams, split: str
) -> tuple[pd.DataFrame, dict]:
    """Extract and grade every candidate's answer; report accuracy, pass@N, no-answer and truncated counts.
    Scored choices are graded exactly (the choice is the gold or not)."""
    grade = grade_choices if is_choices(candidates) else grade_candidates
    graded = grade(benchmark.build(), candidates, problems)
    summary = grading_summary(graded)
    logger.info("Graded %s: %s", split, summary)
    return graded, as_mlflow_metrics({f"grading/{split}/{k}": v for k, v in summary.items()})


def close_executors() -> None:
    """Release the kept Ray executors (their actors, and a Ray this process started)."""
    while _EXECUTORS:
        _EXECUTORS.popitem()[1].close()
