"""Report helpers: dev- and CV-chosen headline, registry-driven cost charging, MLflow names, markdown."""

import json
import math

import pandas as pd
import pytest

from impetus.framework.config import RerankParams
from impetus.energy.registry import EMBEDDING_COST, cost_keys, energy_columns, hybrid_inputs, spec
from impetus.selection.metrics import auroc, within_problem_auroc
from impetus.learned.mining import LeakageError
from impetus.selection.crossval import assign_folds, choose_by_cv, cross_validate
from impetus.selection.report import (
    build_methods,
    choose_on_dev,
    choose_taus,
    cv_selection,
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
    # The default hybrid is not charged MiniLM: embedding consistency is no default input of it.
    assert "embedding_consistency" not in hybrid_inputs() and {"text_ebm", "latent_ebm"} <= set(hybrid_inputs())
    assert EMBEDDING_COST not in cost_keys("hybrid", hybrid_inputs())
    assert EMBEDDING_COST in cost_keys("hybrid", ["embedding_consistency"])  # a user's columns still charge it
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


def _params(selection: str, folds: int = 2) -> RerankParams:
    return RerankParams(selection=selection, cv_folds=folds, shortlist=None, tau_grid=[1.0], weighted_vote=[], n_boot=100,
                        acc_vs_n_subsamples=1, curves=[], seed=0,
                        adaptive={"wave": 1, "thresholds": [1.0], "max_drop": 0.0, "energy": "x"})


def test_headline_is_chosen_on_dev_even_when_another_method_wins_on_eval():
    dev = _split("d", 10, good="spilled_max", bad="neg_logprob_mean")
    evals = _split("e", 10, good="neg_logprob_mean", bad="spilled_max")  # the other way round on eval
    params = _params("dev")
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
    assert choose_on_dev(result, shortlist=["a", "b"]) == "a"  # ... after the shortlist's order
    # Two answers: "5" (right) once with low energy, "7" (wrong) three times with higher energy.
    dev = _table("p", [True, False, False, False], {"hybrid": [0.0, 1.0, 1.0, 1.0]}, ["5", "7", "7", "7"])
    taus = choose_taus(dev, ["hybrid", "missing"], [0.05, 100.0])
    assert taus == {"hybrid": 0.05}  # a low tau follows the energy; a high one is a majority vote


def test_cv_picks_the_method_best_over_all_train_side_problems_where_dev_alone_picks_another():
    # Dev (10 problems) favours spilled_max; the 30 train problems favour neg_logprob_mean. The dev
    # rule takes spilled_max; cross-validation over all 40 train-side problems takes neg_logprob_mean.
    cols = ["spilled_max", "neg_logprob_mean"]
    dev = _split("d", 10, good="spilled_max", bad="neg_logprob_mean")
    train = _split("t", 30, good="neg_logprob_mean", bad="spilled_max")
    evals = _split("e", 10, good="neg_logprob_mean", bad="spilled_max")
    by_dev, _ = rerank_evaluation(dev, evals, cols, [], {}, {}, _params("dev"))
    assert by_dev["headline"]["method"] == "spilled_max"
    train_side = pd.concat([train, dev], ignore_index=True)
    fold_of = assign_folds(train_side["problem_id"], 2, seed=0, held_out=set(evals["problem_id"]))
    selection = cv_selection(train_side, fold_of, cols, [], {}, _params("cv"))
    result, _ = rerank_evaluation(None, evals, cols, [], {}, {}, _params("cv"), selection=selection)
    h = result["headline"]
    assert h["method"] == "neg_logprob_mean" and h["accuracy"] == 1.0
    assert (h["selected_on"], h["folds"], h["n_problems"]) == ("cv", 2, 40)
    cv = json.loads(json.dumps(result))["selection"]["methods"]  # the JSON the catalog writes
    assert cv["neg_logprob_mean"]["accuracy"] == pytest.approx(30 / 40)
    assert cv["spilled_max"]["accuracy"] == pytest.approx(10 / 40)
    assert cv["neg_logprob_mean"]["se"] == pytest.approx(math.sqrt(0.75 * 0.25 / 40))
    assert cv["neg_logprob_mean"]["fold_wins"] == 2 and cv["spilled_max"]["fold_wins"] == 0
    report = markdown_report(result)
    assert "Chosen by 2-fold cross-validation over 40 train-side problems" in report
    assert "| neg_logprob_mean ◀ headline | 75.0 | 6.8 |" in report and "| 2/2 |" in report


def test_folds_are_whole_problems_and_refuse_eval_problems():
    ids = [f"t{i}" for i in range(10)]
    fold_of = assign_folds(ids * 3, 3, seed=1)  # repeated ids (one per candidate) fold as one problem
    assert sorted(fold_of.index) == sorted(ids) and sorted(fold_of.value_counts()) == [3, 3, 4]
    assert fold_of.equals(assign_folds(ids, 3, seed=1))
    with pytest.raises(LeakageError, match="e7"):
        assign_folds(ids + ["e7"], 3, seed=1, held_out={"e7", "e8"})
    with pytest.raises(ValueError, match="folds"):
        assign_folds(ids, 11, seed=1)


def test_cv_near_ties_go_to_more_fold_wins_then_the_cheaper_method():
    summary = {"a": {"accuracy": 0.5, "fold_wins": 1}, "b": {"accuracy": 0.5, "fold_wins": 2},
               "c": {"accuracy": 0.5, "fold_wins": 2}, "first": {"accuracy": 0.9, "fold_wins": 0}}
    assert choose_by_cv(summary, {"b": 2.0, "c": 1.0}) == "c"
    assert choose_by_cv(summary, {"b": 1.0, "c": 2.0}) == "b"
    summary["a"]["accuracy"] = 0.5 + 1 / 40  # one more problem right beats any fold count or cost
    assert choose_by_cv(summary, {"a": 9.0}) == "a"


def test_cv_vote_temperature_is_chosen_without_the_held_out_fold():
    # One problem per fold: on each, only a low tau (follow the energy) or only a high one (majority)
    # is right. Each fold's tau comes from the other fold, so the out-of-fold vote is wrong on both.
    low = _table("p", [True, False, False, False], {"hybrid": [0.0, 1.0, 1.0, 1.0]}, ["5", "7", "7", "7"])
    high = _table("q", [False, True, True, True], {"hybrid": [0.0, 1.0, 1.0, 1.0]}, ["5", "7", "7", "7"])
    df = pd.concat([low, high], ignore_index=True)
    fold_of = pd.Series({"p": 0, "q": 1}, name="fold")
    cv = cross_validate(df, fold_of, ["hybrid"], ["hybrid"], [0.05, 100.0], {})
    assert cv["fold_taus"] == {0: {"hybrid": 100.0}, 1: {"hybrid": 0.05}}
    assert cv["methods"]["vote_hybrid"]["accuracy"] == 0.0 and cv["methods"]["hybrid"]["accuracy"] == 0.5
