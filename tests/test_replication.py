"""selection.replication on hand-made per-seed rerank_metrics dicts: values, not shapes."""

from __future__ import annotations

import json
import math

import pytest

from impetus.selection.replication import aggregate, markdown_report, post_hoc_best, seed_summary, t_interval


def _method(acc: float, single: float, majority: float) -> dict:
    g, gm = acc - single, acc - majority
    return {"accuracy": acc, "ci": [acc - 0.05, acc + 0.05], "gain_vs_single": g,
            "gain_vs_single_ci": [g - 0.06, g + 0.06], "gain_vs_majority": gm,
            "gain_vs_majority_ci": [gm - 0.04, gm + 0.04]}


def _metrics(chosen: str, accs: dict[str, float], single: float = 0.5, majority: float = 0.6) -> dict:
    """A rerank_metrics.json as the V1 pipeline writes it (only the keys replication reads)."""
    accs = {"first": single, "majority": majority, "oracle": 0.9, **accs}
    return {
        "methods": {n: _method(a, single, majority) for n, a in accs.items()},
        "headline": {"method": chosen, "selected_on": "cv"},
        "single": single, "majority": majority, "oracle": 0.9, "n_problems": 100, "n_candidates": 8,
    }


# Seed 0: hybrid chosen, +14 and the post-hoc best. Seed 2: vote chosen (+2) while hybrid was best.
# Seed 1: hybrid chosen, +11; the oracle (a baseline) is never the post-hoc best.
PER_SEED = {
    2: _metrics("vote_nll", {"hybrid": 0.615, "vote_nll": 0.52}),
    0: _metrics("hybrid", {"hybrid": 0.64, "vote_nll": 0.55}),
    1: _metrics("hybrid", {"hybrid": 0.61, "vote_nll": 0.61}),
}


def test_seed_summary_reads_the_chosen_method_and_the_post_hoc_best():
    s = seed_summary(PER_SEED[2])
    assert s["method"] == "vote_nll" and s["selected_on"] == "cv"
    assert s["gain_vs_single"] == pytest.approx(0.02)
    assert s["gain_vs_majority"] == pytest.approx(-0.08)
    assert s["gain_vs_single_ci"] == pytest.approx([-0.04, 0.08])
    assert s["post_hoc_best"] == "hybrid" and s["post_hoc_best_gain_vs_single"] == pytest.approx(0.115)
    assert post_hoc_best(PER_SEED[1]) == "hybrid"  # a tie goes to the first name in sort order


def test_aggregate_mean_gain_t_interval_and_method_counts():
    r = aggregate(PER_SEED)
    assert list(r["seeds"]) == ["0", "1", "2"]
    g = r["gain_vs_single"]
    # gains 0.14, 0.11, 0.02: mean 0.09, sd sqrt(0.0039), t_{0.975, 2} = 4.3027.
    assert g["mean"] == pytest.approx(0.09)
    assert g["sd"] == pytest.approx(math.sqrt(0.0039))
    assert g["ci"] == pytest.approx([0.09 - 0.155134, 0.09 + 0.155134], abs=1e-5)
    assert (g["min"], g["max"]) == pytest.approx((0.02, 0.14))
    assert r["gain_vs_majority"]["mean"] == pytest.approx(-0.01)
    assert r["chosen_methods"] == {"hybrid": 2, "vote_nll": 1}
    assert (r["most_chosen"], r["same_method_count"], r["same_method_every_seed"]) == ("hybrid", 2, False)
    assert r["post_hoc_best"] == {"0": "hybrid", "1": "hybrid", "2": "hybrid"}
    assert r["chosen_is_post_hoc_best"] == 2
    assert r["seeds_meeting_min_gain"] == 2  # +14 and +11 clear +10; +2 does not
    assert r["seeds_gain_ci_above_0"] == 2  # seed 2's [-4, +8] straddles 0
    assert r["seeds_beating_majority"] == 0  # +4 [0, +8]: a CI touching 0 does not count
    json.dumps(r)  # replication.json must serialise


def test_one_seed_has_no_interval_and_empty_input_fails():
    r = aggregate({7: PER_SEED[0]})
    assert r["gain_vs_single"]["mean"] == pytest.approx(0.14)
    assert all(math.isnan(x) for x in r["gain_vs_single"]["ci"])
    assert r["same_method_every_seed"]
    with pytest.raises(ValueError):
        aggregate({})
    assert t_interval([0.1, 0.1])["ci"] == pytest.approx([0.1, 0.1])


def test_markdown_report_states_the_aggregate_and_every_seed():
    text = markdown_report(aggregate(PER_SEED))
    assert "Over **3 data seeds** the chosen method gains **+9.0 points** over one sample" in text
    assert "(95% t interval over seeds [-6.5, +24.5])" in text
    assert "was chosen in 2 of 3 seeds" in text
    assert "| 2 | `vote_nll` (cv) | 52.0 [47.0, 57.0] | +2.0 [-4.0, +8.0] | -8.0 [-12.0, -4.0] |" in text
    assert "`hybrid` (61.5, +11.5) |" in text
