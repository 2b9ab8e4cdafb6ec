"""rerank_eval: every selection method on the same candidates, chosen by cross-validation over the
train-side problems (or on dev), measured on eval."""

from __future__ import annotations

import logging
import time
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from impetus.framework.config import RerankParams, ScorerParams
from impetus.energy.registry import EMBEDDING_COST, LM_PASS_COST, energy_columns
from impetus.learned.crossfit import out_of_fold_table, train_side_table
from impetus.learned.ensemble import ensembles_markdown, member_accuracy
from impetus.learned.fitting import LearnedScorers, score_split
from impetus.pipelines.utils import load_base_tokenizer
from impetus.selection.adaptive import adaptive_report, rule_specs
from impetus.energy.recorded import is_choices
from impetus.selection.choices import (choice_costs, choice_evaluation, choice_metrics, choice_report, choice_selection,
                                      latent_features_lines, latent_features_metrics)
from impetus.selection.plots import make_plots, plot_adaptive, plot_energy_histograms, plot_layer_auroc, plot_roc
from impetus.selection.crossval import assign_folds
from impetus.selection.report import build_methods, cv_selection, markdown_report, rerank_evaluation
from impetus.framework.tracking import as_mlflow_metrics, method_metrics

logger = logging.getLogger(__name__)


def _stage_seconds(timing: dict[str, float], learned_seconds: dict[str, float]) -> dict[str, float]:
    return {LM_PASS_COST: timing["lm_seconds"], EMBEDDING_COST: timing["embedding_seconds"], **learned_seconds}


def _ensembles(evals: pd.DataFrame, members: dict[str, Any], scorers: LearnedScorers) -> dict[str, dict]:
    """Each learned ensemble's members on eval: their accuracies, spread, and the ensemble's gain."""
    out = {}
    for name, z in members.items():
        out[name] = member_accuracy(z, evals, getattr(scorers, name).names, evals[name].to_numpy())
    return out


def _ensemble_metrics(ensembles: dict[str, dict]) -> dict[str, Any]:
    keys = ("n_members", "member_mean", "member_min", "member_max", "member_std", "ensemble", "gain_over_mean_member")
    return {f"ensemble/{name}/{k}": s[k] for name, s in ensembles.items() for k in keys}


def _cross_validated(
    train: tuple, dev: tuple, problems_eval: pd.DataFrame, tok: Any, scorer: ScorerParams,
    cols: list[str], hybrid_cols: list[str], params: RerankParams,
) -> tuple[pd.DataFrame, dict]:
    """Train + dev candidates with out-of-fold learned energies, and the cross-validated selection.

    ``train``/``dev``: ``(graded, energies, hidden, timing, problems)``. Eval problems may be in no
    fold (asserted where the table and the folds are formed).
    """
    t0 = time.perf_counter()
    eval_ids = set(problems_eval["problem_id"])
    table, hidden = train_side_table([s[:3] for s in (train, dev)], held_out=eval_ids)
    fold_of = assign_folds(table["problem_id"], params.cv_folds, params.seed, held_out=eval_ids)
    problems = pd.concat([train[4], dev[4]], ignore_index=True)
    oof, learned = out_of_fold_table(table, problems, hidden, tok, scorer.to_core(), fold_of, eval_ids)
    timing = {k: train[3][k] + dev[3][k] for k in ("lm_seconds", "embedding_seconds")}
    stage_seconds = _stage_seconds(timing, learned)
    if is_choices(oof):
        selection = choice_selection(oof, fold_of, cols, choice_costs(cols, stage_seconds, hybrid_cols, oof["problem_id"].nunique()))
    else:
        selection = cv_selection(oof, fold_of, cols, hybrid_cols, stage_seconds, params)
    # What cross-validation adds to the run (fold fits, out-of-fold scoring, selection), logged so
    # the default run's cost can be read off MLflow (selection/seconds).
    return oof, selection | {"seconds": time.perf_counter() - t0}


def _on_choices(chosen_on: pd.DataFrame, selection: dict | None, evals: pd.DataFrame, cols: list[str],
                hybrid_cols: list[str], dev_seconds: dict[str, float], eval_seconds: dict[str, float],
                params: RerankParams, features: dict[str, Any], ensembles: dict[str, dict]
                ) -> tuple[dict, str, pd.DataFrame, pd.DataFrame, dict[str, Figure], dict]:
    """The rerank stage's outputs on scored choices (:mod:`impetus.selection.choices`): no votes, no
    accuracy against N, no adaptive N (the report says why); the two lm-eval baselines instead."""
    if selection is None:  # selection: dev, one "fold"
        fold_of = pd.Series(0, index=pd.Index(sorted(chosen_on["problem_id"].unique()), name="problem_id"))
        selection = choice_selection(chosen_on, fold_of, cols, choice_costs(cols, dev_seconds, hybrid_cols, len(fold_of)),
                                     selected_on="dev")
    result, selections = choice_evaluation(evals, selection, cols, eval_seconds, hybrid_cols, params.n_boot, params.seed)
    result["latent_features"] = features  # which states the LatentEBM reads (and the CV that chose them)
    result["ensembles"] = ensembles
    report = choice_report(result) + ensembles_markdown(ensembles)  # choice_report shows the layer table
    logger.info("Rerank report:\n%s", report)
    figures = {"roc.png": plot_roc(evals, cols), "energy_histograms.png": plot_energy_histograms(evals, cols)}
    if features.get("cv"):
        figures["latent_layers.png"] = plot_layer_auroc(features)
    flat = method_metrics(result["methods"]) | choice_metrics(result)
    flat |= {"selection/n_problems": selection["n_problems"], "selection/seconds": selection.get("seconds")}
    flat |= _ensemble_metrics(ensembles)
    return result, report, selections, pd.DataFrame(columns=["n", "accuracy", "std", "method"]), figures, \
        as_mlflow_metrics(flat)


def rerank_and_evaluate(
    graded_train: pd.DataFrame, energies_train: pd.DataFrame, hidden_train: dict[str, Any],
    energies_train_timing: dict, problems_train: pd.DataFrame,
    graded_dev: pd.DataFrame, energies_dev: pd.DataFrame, hidden_dev: dict[str, Any], energies_dev_timing: dict,
    problems_dev: pd.DataFrame, graded_eval: pd.DataFrame, energies_eval: pd.DataFrame, hidden_eval: dict[str, Any],
    energies_eval_timing: dict, problems_eval: pd.DataFrame, base_lm: dict[str, Any], text_ebm: dict,
    latent_ebm: dict, hybrid_energy: dict, scorer: ScorerParams, rerank_eval: RerankParams, report: bool = True,
) -> tuple[dict, str, pd.DataFrame, pd.DataFrame, dict[str, Figure], dict]:
    """Choose the headline (cross-validated over train + dev, or on dev), evaluate every method on eval.

    ``report`` False (a learning-curve point, which reads the headline and the methods only): no
    plots, adaptive-N table, markdown or MLflow metrics."""
    scorers = LearnedScorers.from_records(text_ebm, latent_ebm, hybrid_energy)
    tok = load_base_tokenizer(base_lm)
    members: dict[str, Any] = {}
    evals, eval_learned = score_split(graded_eval, energies_eval, hidden_eval, problems_eval, tok, scorers, members)
    ensembles = _ensembles(evals, members, scorers)
    features = {"source": scorers.hidden_source, "cv": scorers.hidden_cv}  # the LatentEBM's states, and their CV
    cols = energy_columns(evals.columns)
    hybrid_cols = scorers.hybrid.cols
    if rerank_eval.selection == "cv":
        chosen_on, selection = _cross_validated(
            (graded_train, energies_train, hidden_train, energies_train_timing, problems_train),
            (graded_dev, energies_dev, hidden_dev, energies_dev_timing, problems_dev),
            problems_eval, tok, scorer, cols, hybrid_cols, rerank_eval,
        )
        dev_seconds: dict[str, float] = {}
    else:
        chosen_on, dev_learned = score_split(graded_dev, energies_dev, hidden_dev, problems_dev, tok, scorers)
        selection, dev_seconds = None, _stage_seconds(energies_dev_timing, dev_learned)
    if is_choices(graded_eval):
        return _on_choices(chosen_on, selection, evals, cols, hybrid_cols, dev_seconds,
                           _stage_seconds(energies_eval_timing, eval_learned), rerank_eval, features, ensembles)
    result, selections = rerank_evaluation(
        chosen_on, evals, cols, hybrid_cols, dev_seconds, _stage_seconds(energies_eval_timing, eval_learned),
        rerank_eval, selection=selection,
    )
    if not report:
        return result, "", selections, pd.DataFrame(columns=["n", "accuracy", "std", "method"]), {}, {}
    figures, curves = make_plots(evals, build_methods(cols, result["taus"]), rerank_eval.curves, cols,
                                 rerank_eval.acc_vs_n_subsamples, rerank_eval.seed)
    result["adaptive"], result["adaptive_online"] = {}, _online_summary(evals)
    if result["adaptive_online"]:  # rows stop early: accuracy against N would mix budgets
        figures.pop("accuracy_vs_n.png", None)
        curves = {}
    else:
        ap = rerank_eval.adaptive
        specs = rule_specs(ap.energy, result["taus"].get(ap.energy, 1.0))
        result["adaptive"], points = adaptive_report(chosen_on, evals, specs, ap.wave, ap.thresholds, ap.max_drop)
        figures["adaptive_n.png"] = plot_adaptive(points, result["adaptive"])
    result["accuracy_vs_n"] = {k: v.to_dict(orient="list") for k, v in curves.items()}
    result["hybrid_weights"] = scorers.hybrid.weights
    result["ensembles"] = ensembles
    result["latent_features"] = features
    report = markdown_report(result) + "\n".join(latent_features_lines(features)) + "\n" + ensembles_markdown(ensembles)
    if features.get("cv"):
        figures["latent_layers.png"] = plot_layer_auroc(features)
    logger.info("Rerank report:\n%s", report)
    curve_rows = (pd.concat([v.assign(method=k) for k, v in curves.items()], ignore_index=True) if curves
                  else pd.DataFrame(columns=["n", "accuracy", "std", "method"]))
    sel = result["selection"]
    per_method = {n: {k: v for k, v in m.items() if k != "fold_accuracy"} for n, m in sel["methods"].items()}
    flat = method_metrics(result["methods"]) | method_metrics(per_method, prefix=f"{sel['selected_on']}_")
    h = result["headline"]
    flat |= {"headline/accuracy": h["accuracy"], "headline/ci_lo": h["ci"][0], "headline/ci_hi": h["ci"][1],
             "headline/gain_vs_single": h["gain_vs_single"]}
    flat |= {f"rerank/{k}": result.get(k) for k in ("single", "majority", "oracle", "n_problems", "n_candidates",
                                                    "sampling_seconds_per_problem")}
    flat |= {"selection/n_problems": sel["n_problems"], "selection/folds": sel["folds"],
             "selection/seconds": sel.get("seconds")}
    flat |= {f"rerank/tau/{k}": v for k, v in result["taus"].items()}
    flat |= _ensemble_metrics(ensembles)
    flat |= latent_features_metrics(features)
    flat |= {f"adaptive/{rule}/{k}": v for rule, r in result["adaptive"].items() for k, v in r.items() if k != "dev"}
    flat |= {f"adaptive_online/eval/{k}": v for k, v in result["adaptive_online"].items()}
    return result, report, selections, curve_rows, figures, as_mlflow_metrics(flat)


def _online_summary(evals: pd.DataFrame) -> dict[str, float]:
    """How many rows eval's problems kept when sampled with adaptive N online (``sampling.adaptive``);
    empty when every problem has the same count (full N)."""
    size = evals.groupby("problem_id").size()
    if size.nunique() <= 1:
        return {}
    return {"samples_per_problem": float(size.mean()), "min": int(size.min()), "max": int(size.max()),
            "tokens_per_problem": float(evals.groupby("problem_id")["n_tokens"].sum().mean())}
