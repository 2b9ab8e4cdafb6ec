"""Hand-checked values for the logit energies (Spilled Energy arXiv:2602.18671, DeepConf arXiv:2508.15260)."""

import math

import pytest
import torch
from torch.testing import assert_close

from impetus.energy import (
    ENERGY_COLUMNS,
    FILL_VALUE,
    candidate_energy_columns,
    candidate_energy_row,
    group_confidences,
    logit_energies,
    lowest_group_confidence,
    pool_span,
    spilled_energy,
    tail_confidence,
)

L4 = math.log(4.0)
L2 = math.log(math.e**2 + 3.0)  # logsumexp([2, 0, 0, 0])
L6 = math.log(6.0)  # logsumexp([0, ln 3, 0, 0])

# 3 tokens, vocab 4: T + 1 = 4 rows. Row i predicted tokens[i]; row 3 follows the last token.
LOGITS = torch.tensor(
    [
        [0.0, 0.0, 0.0, 0.0],  # lse = ln 4
        [1.0, 1.0, 1.0, 1.0],  # lse = 1 + ln 4
        [2.0, 0.0, 0.0, 0.0],  # lse = ln(e^2 + 3)
        [0.0, math.log(3.0), 0.0, 0.0],  # lse = ln 6
    ]
)
TOKENS = torch.tensor([1, 2, 0])  # chosen logits: 0, 1, 2


def test_logit_energies_hand_values():
    out = logit_energies(LOGITS, TOKENS)
    assert set(out) == {"spilled", "marginal", "logprob", "deepconf"}
    for v in out.values():
        assert v.shape == (3,) and v.dtype == torch.float32
    # dE[i] = lse(row i+1) - logit[i, tok_i]
    assert_close(out["spilled"], torch.tensor([1 + L4 - 0.0, L2 - 1.0, L6 - 2.0]))
    # Em[i] = -lse(row i+1)
    assert_close(out["marginal"], torch.tensor([-(1 + L4), -L2, -L6]))
    assert_close(out["logprob"], torch.tensor([-L4, -L4, 2.0 - L2]))
    # V = 4 < 20 so DeepConf averages all 4 log-probs: row 2 -> -((2-L2) + 3(-L2))/4 = L2 - 1/2.
    assert_close(out["deepconf"], torch.tensor([L4, L4, L2 - 0.5]))
    assert_close(spilled_energy(LOGITS, TOKENS), out["spilled"])


def test_logprob_matches_log_softmax_and_deepconf_nonneg():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 50, generator=g) * 5 + 100.0  # large offset: stability check
    toks = torch.randint(0, 50, (8,), generator=g)
    out = logit_energies(logits, toks)
    ref = torch.log_softmax(logits[:-1], -1).gather(-1, toks[:, None]).squeeze(-1)
    assert_close(out["logprob"], ref)
    assert (out["deepconf"] >= 0).all()
    top = torch.log_softmax(logits[:-1], -1).topk(20, -1).values
    assert_close(out["deepconf"], -top.mean(-1))
    assert torch.isfinite(out["spilled"]).all()


def test_batched_matches_per_sequence_and_bad_shape():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 30, generator=g)
    toks = torch.randint(0, 30, (2, 4), generator=g)
    batched = logit_energies(logits, toks)
    for b in range(2):
        single = logit_energies(logits[b], toks[b])
        for k in single:
            assert_close(batched[k][b], single[k])
    with pytest.raises(ValueError):
        logit_energies(logits[0, :4], toks[0])


def test_bf16_input_computed_in_float32():
    out = logit_energies(LOGITS.bfloat16(), TOKENS)
    assert out["spilled"].dtype == torch.float32


def test_empty_completion_energies():
    out = logit_energies(torch.zeros(1, 4), torch.zeros(0, dtype=torch.long))
    assert all(v.shape == (0,) for v in out.values())


def test_pool_span_and_group_confidences():
    v = torch.tensor([3.0, 1.0, 4.0, 1.0, 5.0])
    assert pool_span(v, 1, 4) == {"min": 1.0, "max": 4.0, "mean": 2.0}
    assert all(math.isnan(x) for x in pool_span(v, 2, 2).values())
    conf = torch.tensor([4.0, 2.0, 0.0, 2.0, 6.0])
    assert_close(group_confidences(conf, 2), torch.tensor([3.0, 1.0, 1.0, 4.0]))
    assert lowest_group_confidence(conf, window=2) == 1.0
    assert lowest_group_confidence(conf, window=3) == pytest.approx(4 / 3)  # [2,0,2]
    assert lowest_group_confidence(conf, window=16) == pytest.approx(14 / 5)  # window > T -> mean
    assert tail_confidence(conf, tail=2) == 4.0
    assert tail_confidence(conf, tail=100) == pytest.approx(14 / 5)
    assert math.isnan(lowest_group_confidence(torch.zeros(0)))
    assert math.isnan(tail_confidence(torch.zeros(0)))


def _per_token():
    return {
        "spilled": torch.tensor([1.0, 5.0, 2.0, 3.0]),
        "marginal": torch.tensor([-1.0, -2.0, -3.0, -4.0]),
        "logprob": torch.tensor([-0.5, -1.0, -1.5, -1.0]),
        "deepconf": torch.tensor([2.0, 4.0, 6.0, 8.0]),
    }


def test_candidate_energy_row_with_span():
    row = candidate_energy_row(_per_token(), (1, 3), 4, window=2, tail=2)
    assert row["answer_span_found"] is True and row["empty_completion"] is False
    assert (row["spilled_max"], row["spilled_mean"], row["spilled_min"]) == (5.0, 3.5, 2.0)
    assert (row["marginal_max"], row["marginal_mean"], row["marginal_min"]) == (-2.0, -2.5, -3.0)
    assert row["spilled_max_all"] == 5.0 and row["spilled_mean_all"] == 2.75
    assert row["neg_logprob_mean"] == 1.0  # whole completion, negated
    assert row["neg_logprob_min"] == 1.5  # the least likely token
    assert row["neg_logprob_answer"] == 1.25  # span tokens 1..2: -(-1.0 - 1.5) / 2
    assert row["neg_deepconf_mean"] == -5.0
    assert row["neg_deepconf_lowest_group"] == -3.0  # min window mean [2,4] -> 3, negated
    assert row["neg_deepconf_tail"] == -7.0
    assert set(ENERGY_COLUMNS) <= set(row)


def test_candidate_energy_row_fallbacks():
    row = candidate_energy_row(_per_token(), None, 4)
    assert row["answer_span_found"] is False
    assert row["spilled_max"] == 5.0 and row["spilled_min"] == 1.0  # whole completion
    # span outside the completion also falls back
    assert candidate_energy_row(_per_token(), (7, 9), 4)["answer_span_found"] is False
    empty = {k: torch.zeros(0) for k in _per_token()}
    row = candidate_energy_row(empty, None, 0)
    assert row["empty_completion"] is True
    assert all(row[c] == FILL_VALUE for c in ENERGY_COLUMNS)


def _reference_row(per: dict, span, T: int, window: int, tail: int) -> dict:
    """The columns from the per-sequence helpers, one completion at a time (the formulas as written)."""
    s, e, found = 0, T, False
    if span is not None and min(T, span[1]) > max(0, span[0]):
        s, e, found = max(0, span[0]), min(T, span[1]), True
    sp, mg, sp_all = pool_span(per["spilled"], s, e), pool_span(per["marginal"], s, e), pool_span(per["spilled"], 0, T)
    lp, conf = per["logprob"][:T], per["deepconf"][:T]
    row = {"spilled_max": sp["max"], "spilled_mean": sp["mean"], "spilled_min": sp["min"],
           "marginal_max": mg["max"], "marginal_mean": mg["mean"], "marginal_min": mg["min"],
           "spilled_max_all": sp_all["max"], "spilled_mean_all": sp_all["mean"],
           "neg_logprob_mean": -float(lp.mean()) if T else math.nan,
           "neg_logprob_min": -float(lp.min()) if T else math.nan,
           "neg_logprob_answer": -float(lp[s:e].mean()) if e > s else math.nan,
           "neg_deepconf_mean": -float(conf.mean()) if T else math.nan,
           "neg_deepconf_lowest_group": -lowest_group_confidence(conf, window),
           "neg_deepconf_tail": -tail_confidence(conf, tail)}
    row = {k: v if math.isfinite(v) else FILL_VALUE for k, v in row.items()}
    return {**row, "answer_span_found": found, "empty_completion": T == 0}


@pytest.mark.parametrize("window,tail", [(16, 32), (3, 2), (1, 1)])
def test_candidate_energy_columns_equal_one_completion_at_a_time(window, tail):
    """The vectorised pooling over a right-padded batch gives each completion's row as the
    per-sequence helpers do: ragged lengths, empty completions, spans missing, outside or clipped,
    rows shorter than the DeepConf window or tail, and padding filled with garbage."""
    g = torch.Generator().manual_seed(3)
    lengths = [0, 1, 2, 5, 17, 40, 3, 9]
    spans = [None, (0, 1), (5, 9), (1, 4), (10, 30), None, (2, 2), (-2, 3)]
    width = max(lengths)
    per = {k: torch.randn(len(lengths), width, generator=g) * 3 for k in ("spilled", "marginal", "logprob", "deepconf")}
    for k in per:
        for i, t in enumerate(lengths):
            per[k][i, t:] = float("nan")  # nothing beyond a row's T may leak into its energies
    cols = candidate_energy_columns(per, spans, lengths, window, tail)
    for i, (t, span) in enumerate(zip(lengths, spans)):
        ref = _reference_row({k: v[i, :t] for k, v in per.items()}, span, t, window, tail)
        for k, v in ref.items():
            assert cols[k][i] == pytest.approx(v, rel=1e-5, abs=1e-5), (i, k)
    assert cols["empty_completion"].tolist() == [t == 0 for t in lengths]
    with pytest.raises(ValueError, match="per-token values"):
        candidate_energy_columns({k: v[:, :5] for k, v in per.items()}, spans, lengths)
