import math

import pandas as pd
import pytest

from impetus.selection.report import EMBED, LM_PASS, build_methods, markdown_report, method_costs, mlflow_metrics
from impetus.tracking import as_mlflow_metrics


def test_as_mlflow_metrics_skips_undefined_values_and_sanitises_names():
    out = as_mlflow_metrics({"a/b": 1, "gap": None, "nan": math.nan, "x:y": 2.5})
    assert out == {"a/b": {"value": 1.0, "step": 0}, "x_y": {"value": 2.5, "step": 0}}


def test_method_costs_charge_the_passes_each_method_needs():
    methods = build_methods(["spilled_max", "embedding_consistency", "answer_agreement", "text_ebm", "latent_ebm", "hybrid"], ["hybrid"], 1.0)
    costs = method_costs(methods, ["spilled_max", "embedding_consistency", "answer_agreement"],
                         {LM_PASS: 10.0, EMBED: 2.0, "text_ebm": 1.0, "latent_ebm": 0.5, "hybrid": 0.1})
    assert costs["first"] == costs["majority"] == costs["oracle"] == 0.0
    assert costs["spilled_max"] == 10.0 and costs["embedding_consistency"] == 2.0
    assert costs["answer_agreement"] == 0.0 and costs["text_ebm"] == 1.0
    assert costs["latent_ebm"] == 10.5  # hidden states come from the teacher-forced pass
    assert costs["hybrid"] == costs["vote_hybrid"] == pytest.approx(13.6)


def _result():
    m = {"accuracy": 0.5, "ci": [0.3, 0.7], "gain_vs_single": 0.1, "gain_vs_single_ci": [0.0, 0.2],
         "gain_vs_majority": 0.05, "gap_closure": None, "auroc": 0.7, "seconds_per_problem": 0.01,
         "cost_ratio_vs_sampling": 0.02}
    return {"methods": {"hybrid": m, "first": {**m, "accuracy": 0.4, "auroc": None}}, "single": 0.4,
            "majority": 0.45, "oracle": 0.45, "n_problems": 10, "n_candidates": 4, "sampling_seconds_per_problem": 0.5}


def test_mlflow_metric_names_are_metric_slash_method():
    flat = mlflow_metrics(_result())
    assert flat["accuracy/hybrid"] == 0.5 and flat["ci_lo/hybrid"] == 0.3 and flat["ci_hi/hybrid"] == 0.7
    assert flat["gap_closure/hybrid"] is None  # dropped later by as_mlflow_metrics
    assert flat["rerank/oracle"] == 0.45


def test_markdown_report_orders_by_accuracy_and_shows_undefined_as_dash():
    lines = markdown_report(_result()).splitlines()
    rows = [line for line in lines if line.startswith("| hybrid") or line.startswith("| first")]
    assert rows[0].startswith("| hybrid") and "| 50.0 |" in rows[0] and "| 2.00% |" in rows[0]
    assert "| – |" in rows[0]  # gap closure undefined when oracle == majority
