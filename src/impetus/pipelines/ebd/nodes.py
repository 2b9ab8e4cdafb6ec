"""run_chains: block-wise MH chains per eval problem under an energy; compared at equal tokens."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from impetus.benchmarks.grading import one_prompt_per_problem, text_grader
from impetus.framework.config import BenchmarkParams, EBDParams, EnergyStageParams, SamplingStageParams
from impetus.decoding.evaluate import EBDSplit, evaluate_ebd
from impetus.decoding.report import markdown, plot_tokens
from impetus.latent.scoring import NewAnswerScorer
from impetus.learned.fitting import LearnedScorers, dev_held_out, score_split
from impetus.lm.sampler import get_sampler
from impetus.lm.executors import recorded_layers
from impetus.pipelines.utils import dev_runs_cache, load_base_lm, sampling_params
from impetus.selection.budget import v1_reference
from impetus.framework.tracking import as_mlflow_metrics, method_metrics

logger = logging.getLogger(__name__)


def _split(problems: pd.DataFrame, prompts: pd.DataFrame, graded: pd.DataFrame, energies_df: pd.DataFrame,
           hidden: dict[str, Any], tok: Any, bench: Any, scorers: LearnedScorers,
           energies: EnergyStageParams, energy: str, held_out: bool = False) -> EBDSplit:
    """One split's EBD inputs: candidates with every energy (chain starts), chain states scored
    against the split's candidate pool from their recorded values by ``energy`` (the chains' only one),
    graded against its problems (``held_out``: dev, see :func:`~impetus.learned.fitting.dev_held_out`)."""
    scorer = NewAnswerScorer(tok, bench, problems, graded, scorers, energies.embedding_model, held_out, energy)
    table = score_split(graded, energies_df, hidden, problems, tok, scorers, held_out=held_out)[0]
    return EBDSplit(prompts, table, scorer.from_traces, text_grader(bench, problems), scorer.traces_many)


def run_chains(
    problems_eval: pd.DataFrame, prompts_eval: pd.DataFrame, graded_eval: pd.DataFrame, energies_eval: pd.DataFrame,
    hidden_eval: dict[str, Any], problems_dev: pd.DataFrame, prompts_dev: pd.DataFrame, graded_dev: pd.DataFrame,
    energies_dev: pd.DataFrame, hidden_dev: dict[str, Any], rerank_metrics: dict, base_lm: dict[str, Any],
    text_ebm: dict, latent_ebm: dict, hybrid_energy: dict, benchmark: BenchmarkParams, sampling: SamplingStageParams,
    energies: EnergyStageParams, ebd: EBDParams,
) -> tuple[dict, str, pd.DataFrame, pd.DataFrame, dict, dict]:
    """EBD answers for the first ``ebd.n_problems`` eval problems, settings chosen on the dev split,
    and the comparison with V1 (:func:`impetus.decoding.evaluate.evaluate_ebd`)."""
    one_prompt_per_problem(prompts_eval, "ebd")  # before any model is loaded
    cfg = ebd.to_core()
    scorers = LearnedScorers.from_records(text_ebm, latent_ebm, hybrid_energy)
    model, tok = load_base_lm(base_lm)
    bench = benchmark.build()
    eval_split = _split(problems_eval, prompts_eval, graded_eval, energies_eval, hidden_eval, tok, bench, scorers,
                        energies, cfg.energy)
    dev_split = _split(problems_dev, prompts_dev, graded_dev, energies_dev, hidden_dev, tok, bench, scorers,
                       energies, cfg.energy, dev_held_out(scorers, "ebd")) if cfg.grid else None
    v1 = v1_reference(eval_split.candidates, rerank_metrics, vote_for=[cfg.energy])
    sampler = get_sampler(sampling.backend, model, tok, record=True, **recorded_layers(base_lm))
    params = sampling_params(sampling, benchmark)
    dev_runs = dev_runs_cache(ebd.dev_runs_dir if cfg.grid else None, model, base_lm, sampling.backend, repr(params),
                              problems_dev, prompts_dev, graded_dev, energies_dev, hidden_dev, text_ebm, latent_ebm,
                              hybrid_energy, energies.model_dump(mode="json"), benchmark.model_dump(mode="json"))
    result, answers, per_step = evaluate_ebd(sampler, tok, params, eval_split, v1, cfg, dev=dev_split, dev_runs=dev_runs)
    if dev_runs.read:
        logger.info("EBD: %d dev-grid runs read from %s (same model, data, energies, settings and code)",
                    dev_runs.read, ebd.dev_runs_dir)
    report = markdown(result)
    logger.info("EBD report:\n%s", report)
    flat = method_metrics({k: {kk: vv for kk, vv in m.items() if kk != "family"} for k, m in result["methods"].items()},
                          prefix="ebd/")
    return (result, report, answers, per_step, {"ebd_accuracy_vs_tokens.png": plot_tokens(result)},
            as_mlflow_metrics(flat))
