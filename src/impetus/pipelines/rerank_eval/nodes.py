"""rerank_eval: every selection method on the same candidates, chosen on dev, measured on eval."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from impetus.framework.config import RerankParams
from impetus.energy.registry import EMBEDDING_COST, LM_PASS_COST, energy_columns
from impetus.learned.fitting import LearnedScorers, score_split
from impetus.pipelines.utils import load_base_tokenizer
from impetus.selection.adaptive import adaptive_report, rule_specs
from impetus.selection.plots import make_plots, plot_adaptive
from impetus.selection.report import build_methods, markdown_report, rerank_evaluation
from impetus.framework.tracking import as_mlflow_metrics, method_metrics

logger = logging.getLogger(__name__)


def _stage_seconds(timing: dict[str, float], learned_seconds: dict[str, float]) -> dict[str, float]:
    return {LM_PASS_COST: timing["lm_seconds"], EMBEDDING_COST: timing["embedding_seconds"], **learned_seconds}


def rerank_and_evaluate(
    graded_dev: pd.DataFrame, energies_dev: pd.DataFrame, hidden_dev: dict[str, Any], energies_dev_timing: dict,
    problems_dev: pd.DataFrame, graded_eval: pd.DataFrame, energies_eval: pd.DataFrame, hidden_eval: dict[str, Any],
    energies_eval_timing: dict, problems_eval: pd.DataFrame, base_lm: dict[str, Any], text_ebm: dict,
    latent_ebm: dict, hybrid_energy: dict, rerank_eval: RerankParams,
) -> tuple[dict, str, pd.DataFrame, pd.DataFrame, dict[str, Figure], dict]:
    """Score dev and eval with the learned energies, choose on dev, evaluate every method on eval."""
    scorers = LearnedScorers.from_records(text_ebm, latent_ebm, hybrid_energy)
    tok = load_base_tokenizer(base_lm)
    dev, dev_learned = score_split(graded_dev, energies_dev, hidden_dev, problems_dev, tok, scorers)
    evals, eval_learned = score_split(graded_eval, energies_eval, hidden_eval, problems_eval, tok, scorers)
    cols = energy_columns(evals.columns)
    result, selections = rerank_evaluation(
        dev, evals, cols, scorers.hybrid.cols, _stage_seconds(energies_dev_timing, dev_learned),
        _stage_seconds(energies_eval_timing, eval_learned), rerank_eval,
    )
    figures, curves = make_plots(evals, build_methods(cols, result["taus"]), rerank_eval.curves, cols,
                                 rerank_eval.acc_vs_n_subsamples, rerank_eval.seed)
    ap = rerank_eval.adaptive
    specs = rule_specs(ap.energy, result["taus"].get(ap.energy, 1.0))
    result["adaptive"], points = adaptive_report(dev, evals, specs, ap.wave, ap.thresholds, ap.max_drop)
    figures["adaptive_n.png"] = plot_adaptive(points, result["adaptive"])
    result["accuracy_vs_n"] = {k: v.to_dict(orient="list") for k, v in curves.items()}
    result["hybrid_weights"] = scorers.hybrid.weights
    report = markdown_report(result)
    logger.info("Rerank report:\n%s", report)
    curve_rows = pd.concat([v.assign(method=k) for k, v in curves.items()], ignore_index=True)
    flat = method_metrics(result["methods"]) | method_metrics(result["dev_methods"], prefix="dev_")
    h = result["headline"]
    flat |= {"headline/accuracy": h["accuracy"], "headline/ci_lo": h["ci"][0], "headline/ci_hi": h["ci"][1],
             "headline/gain_vs_single": h["gain_vs_single"]}
    flat |= {f"rerank/{k}": result.get(k) for k in ("single", "majority", "oracle", "n_problems", "n_candidates",
                                                    "sampling_seconds_per_problem", "n_dev_problems")}
    flat |= {f"rerank/tau/{k}": v for k, v in result["taus"].items()}
    flat |= {f"adaptive/{rule}/{k}": v for rule, r in result["adaptive"].items() for k, v in r.items() if k != "dev"}
    return result, report, selections, curve_rows, figures, as_mlflow_metrics(flat)
