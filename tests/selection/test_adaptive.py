"""Adaptive N evaluated exactly on full-N candidates: stopping, tokens, threshold choice."""

import pandas as pd
import pytest

from impetus.selection.adaptive import RuleSpec, choose_threshold, evaluate_rule, wave_table


def _problem(pid: str, answers: list[str], gold: str, tokens: int = 10) -> list[dict]:
    return [{"problem_id": pid, "sample_idx": i, "answer": a, "correct": a == gold, "n_tokens": tokens,
             "conf": -1.0} for i, a in enumerate(answers)]


@pytest.fixture()
def df() -> pd.DataFrame:
    rows = (
        _problem("easy", ["5"] * 8, "5")  # unanimous: settles after the first wave
        + _problem("hard", ["3", "4", "4", "4", "4", "4", "3", "4"], "4")  # the first wave is split 1:1
        + _problem("none", [None] * 8, "1")  # never answers: sampled to N_max, graded wrong
    )
    return pd.DataFrame(rows)


def test_wave_table_shares_and_tokens(df):
    t = wave_table(df, RuleSpec("vote_margin", margin_stop=True), wave=2).set_index(["problem_id", "k"])
    assert t.loc[("easy", 2), "share"] == 1.0 and t.loc[("easy", 2), "tokens"] == 20
    assert t.loc[("hard", 2), "share"] == 0.5 and not t.loc[("hard", 2), "correct"]  # tie -> first answer "3"
    assert t.loc[("hard", 4), "correct"] and t.loc[("hard", 8), "share"] == pytest.approx(6 / 8)
    # Margin: at k = 6 "4" leads 5:1 with 2 samples left, so it cannot be overtaken; at k = 4 (3:1,
    # 4 left) it still could be.
    assert t.loc[("hard", 6), "settled"] and not t.loc[("hard", 4), "settled"]
    assert t.loc[("none", 8), "share"] == 0.0 and not t.loc[("none", 8), "correct"]


def test_stopping_saves_tokens_and_keeps_accuracy(df):
    table = wave_table(df, RuleSpec("vote_margin", margin_stop=True), wave=2)
    r = evaluate_rule(table, threshold=0.75)
    # easy stops at k=2 (20 tokens), hard at k=4 (share 3/4, right), none at 8: (20 + 40 + 80) / 240.
    assert r["tokens_per_problem"] == pytest.approx(140 / 3)
    assert r["tokens_saved"] == pytest.approx(1 - 140 / 240)
    assert r["accuracy"] == r["accuracy_full_n"] == pytest.approx(2 / 3)
    strict = evaluate_rule(table, threshold=1.01)  # only the margin rule stops early
    assert strict["tokens_saved"] < r["tokens_saved"]
    loose = evaluate_rule(table, threshold=0.5)  # stops "hard" at its 1:1 first wave, on the wrong answer
    assert loose["accuracy"] == pytest.approx(1 / 3)
    assert choose_threshold(table, [0.5, 0.75, 1.01], max_drop=0.01) == 0.75


def test_energy_and_confidence_weights_change_the_share(df):
    d = df.copy()
    d["e"] = [0.0] * 8 + [5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0, 0.0] + [0.0] * 8  # the wrong "3"s have high energy
    t = wave_table(d, RuleSpec("energy_vote", weight_col="e", tau=0.5), wave=2).set_index(["problem_id", "k"])
    assert t.loc[("hard", 2), "share"] > 0.9 and t.loc[("hard", 2), "correct"]
    d["conf"] = [-1.0] * 8 + [-0.1, -3.0, -3.0, -3.0, -3.0, -3.0, -0.1, -3.0] + [-1.0] * 8
    t = wave_table(d, RuleSpec("deepconf", weight_col="conf"), wave=2).set_index(["problem_id", "k"])
    assert t.loc[("hard", 2), "share"] == pytest.approx(3.0 / 3.1) and t.loc[("hard", 2), "correct"]


def test_adaptive_report_chooses_on_dev_and_plots(df):
    from impetus.selection.adaptive import adaptive_report, rule_specs
    from impetus.selection.plots import plot_adaptive

    d = df.assign(e=0.0, neg_deepconf_lowest_group=-1.0)
    result, points = adaptive_report(d, d, rule_specs("e", 1.0), wave=2, thresholds=[0.5, 0.75, 1.01], max_drop=0.01)
    assert set(result) == {"vote_margin", "energy_vote", "deepconf"}
    assert result["vote_margin"]["threshold"] == 0.75 and result["vote_margin"]["tokens_saved"] > 0.4
    assert set(points["rule"]) >= {"vote_margin", "vote_margin@k"}
    assert len(plot_adaptive(points, result).axes) == 1
