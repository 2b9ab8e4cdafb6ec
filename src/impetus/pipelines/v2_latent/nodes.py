"""optimize_latents: optimise eval answers' latent prefixes under an energy and compare with V1."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from impetus.benchmarks.grading import one_prompt_per_problem, text_grader
from impetus.framework.config import BenchmarkParams, EnergyStageParams, LatentParams, SamplingStageParams
from impetus.latent.evaluate import Split, evaluate_v2
from impetus.latent.report import markdown, plots
from impetus.latent.scoring import NewAnswerScorer
from impetus.learned.fitting import LearnedScorers, dev_held_out, score_split
from impetus.lm.sampler import get_sampler
from impetus.lm.executors import recorded_layers
from impetus.pipelines.utils import dev_runs_cache, load_base_lm, sampling_params
from impetus.selection.budget import v1_reference
from impetus.framework.tracking import as_mlflow_metrics, method_metrics

logger = logging.getLogger(__name__)


def _split(problems: pd.DataFrame, prompts: pd.DataFrame, graded: pd.DataFrame, tok: Any, bench: Any,
           scorers: LearnedScorers, energies: EnergyStageParams, scored: pd.DataFrame, energy: str,
           held_out: bool = False) -> Split:
    """One split's V2 inputs: new answers scored against its candidate pool from their recorded
    values, graded against its problems; the pool's ``energy`` per problem (mean, std, min) from
    its ``scored`` candidates (LatentSeek's reward is relative to them). ``held_out``: dev, see
    :func:`~impetus.learned.fitting.dev_held_out` (``gradient`` mode's LatentEBM still averages every
    member: its forward has no problem ids)."""
    scorer = NewAnswerScorer(tok, bench, problems, graded, scorers, energies.embedding_model, held_out, energy)
    stats = scored.groupby("problem_id")[energy].agg(["mean", lambda e: e.std(ddof=0), "min"])
    pools = {str(p): tuple(float(x) for x in row) for p, row in stats.iterrows()}
    return Split(prompts, graded, scorer.traces_many, text_grader(bench, problems), pools)


def optimize_latents(
    problems_eval: pd.DataFrame, prompts_eval: pd.DataFrame, graded_eval: pd.DataFrame, energies_eval: pd.DataFrame,
    hidden_eval: dict[str, Any], problems_dev: pd.DataFrame, prompts_dev: pd.DataFrame, graded_dev: pd.DataFrame,
    energies_dev: pd.DataFrame, hidden_dev: dict[str, Any], rerank_selections: pd.DataFrame, rerank_metrics: dict, base_lm: dict[str, Any], text_ebm: dict, latent_ebm: dict,
    hybrid_energy: dict, benchmark: BenchmarkParams, sampling: SamplingStageParams, energies: EnergyStageParams,
    v2_latent: LatentParams,
) -> tuple[dict, str, pd.DataFrame, pd.DataFrame, dict, dict]:
    """V2 answers for the first ``n_problems`` eval problems, from each start and mode, settings
    chosen on the dev split; metrics against the zero-step controls and the V1 methods matched at
    V2's token budget (:func:`impetus.latent.evaluate.evaluate_v2`), and the chosen settings' dev answers."""
    one_prompt_per_problem(prompts_eval, "v2_latent")  # before any model is loaded
    scorers = LearnedScorers.from_records(text_ebm, latent_ebm, hybrid_energy)
    model, tok = load_base_lm(base_lm)
    model.requires_grad_(False)  # gradients flow to the latents only, not into the LM's weights
    bench = benchmark.build()
    scored_eval = score_split(graded_eval, energies_eval, hidden_eval, problems_eval, tok, scorers)[0]
    held_out = dev_held_out(scorers, "v2_latent")
    scored_dev = score_split(graded_dev, energies_dev, hidden_dev, problems_dev, tok, scorers, held_out=held_out)[0]
    eval_split = _split(problems_eval, prompts_eval, graded_eval, tok, bench, scorers, energies, scored_eval,
                        v2_latent.energy)
    dev_split = _split(problems_dev, prompts_dev, graded_dev, tok, bench, scorers, energies, scored_dev,
                       v2_latent.energy, held_out)
    v1 = v1_reference(scored_eval, rerank_metrics)
    params = sampling_params(sampling, benchmark)
    dev_runs = dev_runs_cache(
        v2_latent.dev_runs_dir if v2_latent.grid else None, model, base_lm, sampling.backend, repr(params), problems_dev,
        prompts_dev, graded_dev, energies_dev, hidden_dev, text_ebm, latent_ebm, hybrid_energy, scorers.hidden_source,
        energies.model_dump(mode="json"), benchmark.model_dump(mode="json"))
    result, v2, dev_answers = evaluate_v2(
        get_sampler(sampling.backend, model, tok, record=True, **recorded_layers(base_lm)), tok, params,
        eval_split, rerank_selections, v1, v2_latent.to_core(), dev=dev_split,
        state_energy=scorers.latent_ebm, hidden_source=scorers.hidden_source, dev_runs=dev_runs)
    if dev_runs.read:
        logger.info("V2: %d dev-grid runs read from %s (same model, data, energies, settings and code)",
                    dev_runs.read, v2_latent.dev_runs_dir)
    report = markdown(result, v2)
    logger.info("V2 report:\n%s", report)
    figures = plots(result, v2, lambda pid, text: eval_split.grade(pid, text)[1])
    flat = method_metrics({k: {kk: vv for kk, vv in m.items() if kk != "family"} for k, m in result["methods"].items()},
                          prefix="v2/")
    flat |= {f"v2/ceiling/{split}/{k}": v for split, c in result.get("ceiling", {}).items() if isinstance(c, dict)
             for k, v in c.items() if isinstance(v, (int, float))}
    answers = v2.drop(columns=["trace"]).assign(steps=[len(t) - 1 for t in v2["trace"]])
    return result, report, answers, dev_answers, figures, as_mlflow_metrics(flat)
