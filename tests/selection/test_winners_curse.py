"""The winner's-curse replay: each rule picks from the out-of-fold table only; eval is looked up after."""

import json
from pathlib import Path

import pytest
import yaml

from impetus.selection.winners_curse import SHORTLIST, pick, replay, summary


def _metrics() -> dict:
    # "a" tops the out-of-fold table but is noisy (SE 15 points) and bad on eval; "b" is precise and good.
    oof = {"a": (0.70, 0.15), "b": (0.65, 0.01), "hybrid": (0.50, 0.01), "oracle": (1.0, 0.0)}
    return {"selection": {"methods": {m: {"accuracy": a, "se": se, "fold_wins": 1} for m, (a, se) in oof.items()}},
            "methods": {"a": {"accuracy": 0.50}, "b": {"accuracy": 0.60}, "hybrid": {"accuracy": 0.55},
                        "oracle": {"accuracy": 1.0}},
            "headline": {"method": "a"}}


def test_each_rule_picks_from_the_out_of_fold_table():
    m = _metrics()
    assert pick(m, "cv") == "a"  # the whole table's best, the run's own choice here
    assert pick(m, "lcb") == "b"  # 0.70 - 0.15 < 0.65 - 0.01
    assert pick(m, "shrink") == "b"  # a's noisy lead is shrunk most
    assert pick(m, "shortlist") == "hybrid"  # the only shortlisted method here
    with pytest.raises(ValueError, match="unknown rule"):
        pick(m, "eval")


def test_replay_scores_picks_on_eval(tmp_path):
    path = tmp_path / "rerank_metrics.json"
    path.write_text(json.dumps(_metrics()))
    rows = replay([path]).set_index("rule")
    assert rows.loc["cv", "eval"] == 0.50 and rows.loc["cv", "regret"] == pytest.approx(0.10)
    assert bool(rows.loc["lcb", "is_best"]) and rows.loc["lcb", "eval_best"] == 0.60  # the oracle is never a pick
    s = summary(replay([path, path]))
    assert s.loc["lcb", "best_on_eval"] == 1.0 and s.loc["cv", "best_on_eval"] == 0.0 and s.loc["cv", "runs"] == 2


def test_shortlist_replay_breaks_ties_as_the_pipeline_does():
    """Tied out of fold: more folds won, then the shortlist's order, then cheaper (the costs the run
    recorded), as choose_by_cv."""
    m = _metrics()
    m["selection"]["methods"]["hybrid"]["accuracy"] = 0.66
    m["selection"]["methods"]["majority"] = {"accuracy": 0.66, "se": 0.01, "fold_wins": 1}
    m["methods"]["majority"] = {"accuracy": 0.58}
    m["selection"]["costs"] = {"hybrid": 0.02, "majority": 0.0001}
    assert pick(m, "shortlist") == "hybrid"  # same accuracy and folds won: listed first, though dearer
    assert pick(m, "shortlist", shortlist=("majority", "hybrid")) == "majority"
    m["selection"]["methods"]["majority"]["fold_wins"] = 2
    assert pick(m, "shortlist") == "majority"  # more folds won comes first
    assert pick(m, "cv") == "a"


def test_the_default_shortlist_is_the_one_the_study_fixed():
    conf = Path(__file__).parents[2] / "conf/base/parameters_rerank_eval.yml"
    assert tuple(yaml.safe_load(conf.read_text())["rerank_eval"]["shortlist"]) == SHORTLIST
