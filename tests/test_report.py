"""Report helpers: dev-chosen headline, registry-driven cost charging, MLflow names, markdown."""

import math

import numpy as np
import pandas as pd
import pytest

from impetus.framework.config import RerankParams
from impetus.energy.registry import cost_keys, energy_columns, hybrid_inputs, spec
from impetus.selection.metrics import auroc, within_problem_auroc
from impetus.selection.report import (
    build_methods,
    choose_on_dev,
    choose_taus,
    markdown_report,
    method_costs,
    rerank_evaluation,
)
from impetus.framework.tracking import as_mlflow_metrics, method_metrics


def test_as_mlflow_metrics_skips_undefined_values_and_sanitises_names():
    out = as_mlflow_metrics({"a/b": 1, "gap": None, "nan": math.nan, "x:y": 2.5, "acc/hybrid@13": 0.5})
    assert out == {"a/b": {"value": 1.0, "step": 0}, "x_y": {"value": 2.5, "step": 0},
                   "acc/hybrid_13": {"value": 0.5, "step": 0}}


def test_method_metrics_names_metric_then_method_and_splits_cis():
    flat = method_metrics({"hybrid": {"accuracy": 0.5, "ci": [0.4, 0.6], "gap_closure": None, "auroc_within": 0.7}})
    assert flat == {"accuracy/hybrid": 0.5, "ci_lo/hybrid": 0.4, "ci_hi/hybrid": 0.6, "auroc_within/hybrid": 0.7}


def test_costs_come_from_the_registry():
    methods = build_methods(["spilled_max", "embedding_consistency", "text_ebm", "latent_ebm", "hybrid"], {"hybrid": 1.0})
    seconds = {"lm_pass": 10.0, "embedding": 2.0, "text_ebm": 0.5, "latent_ebm": 0.25, "hybrid": 0.125}
    costs = method_costs(methods, seconds, hybrid_cols=["embedding_consistency", "text_ebm"])
    assert costs["spilled_max"] == 10.0 and costs["embedding_consistency"] == 2.0
    assert costs["latent_ebm"] == 10.25  # needs the pass's hidden states
    assert costs["hybrid"] == costs["vote_hybrid"] == 2.0 + 0.5 + 0.125  # only its actual inputs
    assert costs["first"] == costs["majority"] == costs["oracle"] == 0.0
    assert cost_keys("answer_agreement") == set()
    assert "hybrid" not in hybrid_inputs() and "spilled_max" in hybrid_inputs()
    assert energy_columns(["x", "hybrid", "spilled_max"]) == ["spilled_max", "hybrid"]
    with pytest.raises(KeyError, match="registered"):
        spec("nope")


def test_within_problem_auroc_ignores_easy_vs_hard_separation():
    # Problem a: all candidates right with low energy; b: all wrong with high energy; c: mixed, the
    # energy is random noise within it. Pooled AUROC is high, within-problem AUROC is not.
    df = pd.DataFrame({
        "problem_id": ["a"] * 4 + ["b"] * 4 + ["c"] * 4,
        "correct": [True] * 4 + [False] * 4 + [True, False, True, False],
        "e": [0.0, 0.1, 0.2, 0.3, 5.0, 5.1, 5.2, 5.3, 2.0, 1.0, 3.0, 4.0],
    })
    assert auroc(df["correct"], df["e"]) > 0.8
    assert within_problem_auroc(df, "e") == pytest.approx(0.5)  # right (2, 3) vs wrong (1, 4): 2 of 4 pairs
    assert within_problem_auroc(df[df.problem_id != "c"], "e") is None


def _table(pid: str, right_of: dict[str, list[bool]], energies: dict[str, list[float]], answers: list[str]) -> pd.DataFrame:
    n = len(answers)
    return pd.DataFrame({"problem_id": [pid] * n, "sample_idx": range(n), "answer": answers,
                         "correct": right_of, "gen_seconds": [1.0] * n, "finish_reason": ["stop"] * n, **energies})


def _split(prefix: str, n: int, good: str, bad: str) -> pd.DataFrame:
    """Problems where energy ``good`` ranks the right candidate first and ``bad`` the wrong one."""
    parts = []
    for p in range(n):
        correct = [False, True, False, False]
        parts.append(_table(f"{prefix}{p}", correct, {good: [1.0, 0.0, 2.0, 3.0], bad: [0.0, 1.0, 2.0, 3.0]},
                            ["7", "5", "8", "9"]))
    return pd.concat(parts, ignore_index=True)


def test_headline_is_chosen_on_dev_even_when_another_method_wins_on_eval():
    dev = _split("d", 10, good="spilled_max", bad="neg_logprob_mean")
    evals = _split("e", 10, good="neg_logprob_mean", bad="spilled_max")  # the other way round on eval
    params = RerankParams(tau_grid=[1.0], weighted_vote=[], n_boot=100, acc_vs_n_subsamples=1, curves=[], seed=0,
                          adaptive={"wave": 1, "thresholds": [1.0], "max_drop": 0.0, "energy": "x"})
    result, selections = rerank_evaluation(dev, evals, ["spilled_max", "neg_logprob_mean"], [], {}, {}, params)
    h = result["headline"]
    assert h["method"] == "spilled_max" and h["selected_on"] == "dev" and h["dev_accuracy"] == 1.0
    assert h["accuracy"] == 0.0 and h["post_hoc_best_on_eval"] == "neg_logprob_mean"
    assert result["methods"]["neg_logprob_mean"]["accuracy"] == 1.0
    lo, hi = h["ci"]
    assert lo <= h["accuracy"] <= hi and h["gain_vs_single"] == pytest.approx(0.0 - result["single"])
    assert set(selections.columns) >= {"problem_id", "spilled_max", "majority"}
    report = markdown_report(result)
    assert report.index("Chosen on dev") < report.index("| method |")
    assert "spilled_max ◀ headline" in report and "post hoc" in report


def test_dev_choice_breaks_ties_by_cost_and_vote_tau_on_dev():
    result = {"methods": {"a": {"accuracy": 0.5, "seconds_per_problem": 2.0}, "b": {"accuracy": 0.5, "seconds_per_problem": 1.0},
                          "first": {"accuracy": 0.9, "seconds_per_problem": 0.0}}}
    assert choose_on_dev(result) == "b"  # 'first' is never the headline; ties go to the cheaper
    # Two answers: "5" (right) once with low energy, "7" (wrong) three times with higher energy.
    dev = _table("p", [True, False, False, False], {"hybrid": [0.0, 1.0, 1.0, 1.0]}, ["5", "7", "7", "7"])
    taus = choose_taus(dev, ["hybrid", "missing"], [0.05, 100.0])
    assert taus == {"hybrid": 0.05}  # a low tau follows the energy; a high one is a majority vote
