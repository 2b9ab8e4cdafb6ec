"""The nucleus step with reused buffers draws the same tokens and statistics, bit for bit, as the
straightforward version it replaced (kept here as the reference)."""

from __future__ import annotations

import pytest
import torch

from impetus.lm.nucleus import sample_tokens


def reference(logits, rows, temperature, top_p, record):
    """The step before the step-profile fixes (commit 3cb3508), verbatim in its arithmetic."""
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    idx = None
    if temperature == 0:
        tok = logits.argmax(dim=-1)
    else:
        u = torch.stack([torch.rand((), generator=r.gen, dtype=torch.float64) for r in rows]).float()
        probs = torch.softmax(logits / temperature, dim=-1)
        if top_p >= 1.0:
            cdf = probs.cumsum(dim=-1)
        else:
            vals, idx = probs.topk(min(256, probs.shape[-1]), dim=-1)
            if bool((vals.sum(dim=-1) < top_p).any()):
                vals, idx = probs.sort(dim=-1, descending=True)
            before = vals.cumsum(dim=-1) - vals
            vals = vals * (before < top_p)
            cdf = vals.cumsum(dim=-1)
        target = (u * cdf[:, -1])[:, None]
        j = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1)
        tok = (j if idx is None else idx.gather(1, j))[:, 0]
    chosen = logits.gather(1, tok[:, None])[:, 0]
    stats = None
    if record:
        k = min(20, logits.shape[-1])
        top = logits.gather(1, idx[:, :k]) if idx is not None and idx.shape[1] >= k else logits.topk(k, dim=-1).values
        lse_t = lse if temperature in (0, 1) else torch.logsumexp(logits / temperature, dim=-1)
        stats = torch.stack([lse, chosen, lse - top.mean(dim=-1), lse_t], dim=1)
    return tok, chosen - lse, stats


def _rows(n, seed):
    return [type("R", (), {"gen": torch.Generator().manual_seed(seed + i)})() for i in range(n)]


@pytest.mark.parametrize("temperature, top_p", [(0.0, 1.0), (1.0, 1.0), (0.8, 1.0), (0.8, 0.95), (1.3, 0.5),
                                                (0.7, 0.999999)])
@pytest.mark.parametrize("record", [True, False])
def test_same_tokens_and_statistics_as_the_reference(temperature, top_p, record):
    gen = torch.Generator().manual_seed(0)
    for step, (b, v) in enumerate([(7, 3000), (7, 3000), (3, 3000), (5, 40)]):  # the buffers change shape too
        logits = torch.randn(b, v, generator=gen) * 4
        logits[0, :5] = float("-inf")
        got = sample_tokens(logits, _rows(b, step), temperature, top_p, record)
        ref = reference(logits, _rows(b, step), temperature, top_p, record)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
        assert (got[2] is None) == (ref[2] is None)
        if record:
            assert torch.equal(got[2], ref[2])


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_a_banned_token_is_never_drawn_and_the_rest_keep_their_odds(temperature):
    """``banned``: draws follow the tempered distribution with the token removed and renormalised
    (chi-square over many seeded rows); recorded statistics are the full distribution's."""
    from scipy.stats import chisquare

    logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -1.0]]).repeat(4000, 1)
    banned = torch.full((4000,), 1)
    banned[:10] = -1  # rows without a ban are untouched
    tok, lp, stats = sample_tokens(logits, _rows(4000, 7), temperature, 1.0, True, banned)
    free, _, stats_full = sample_tokens(logits, _rows(4000, 7), temperature, 1.0, True)
    assert torch.equal(tok[:10], free[:10])
    q = torch.softmax(logits[0].double() / temperature, -1)
    q[1] = 0.0
    q = q / q.sum()
    counts = torch.bincount(tok[10:], minlength=6).double()
    assert counts[1] == 0
    kept = q > 0
    assert chisquare(counts[kept].numpy(), (q[kept] * counts.sum()).numpy()).pvalue > 0.01
    assert torch.equal(stats[:, [0, 2, 3]], stats_full[:, [0, 2, 3]])  # lse, deepconf, tempered lse
    assert torch.allclose(lp, logits.gather(1, tok[:, None])[:, 0] - torch.logsumexp(logits, -1))
    with pytest.raises(ValueError, match="top_p 1"):
        sample_tokens(logits[:2], _rows(2, 0), 1.0, 0.9, True, banned[:2])
