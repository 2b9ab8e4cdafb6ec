"""One decoding step's token choice: seeded inverse-CDF nucleus sampling over raw logits, or a
forced token (:func:`force_tokens`, V2's decoded window).

Also returns the raw-logit statistics the sampler records while decoding
(:mod:`impetus.lm.recording`), computed from what the choice needs anyway.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from impetus.energy.logit import DEEPCONF_TOP_K

# Nucleus sampling looks at this many top tokens first; a full sort is done only when they hold
# less than top_p of the mass (rare for LMs), because sorting a 50k vocab per row per step is slow.
_TOPK_FIRST = 256


class _Workspace(threading.local):
    """Vocabulary-sized scratch tensors reused from step to step (one set per thread): a fresh
    ``[B, V]`` temporary per op costs page faults on every step (the step profile of
    ``make bench``), more than the arithmetic on it."""

    def get(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (tuple(like.shape), like.dtype, like.device)
        if getattr(self, "key", None) != key:
            self.key, self.buffers = key, (torch.empty_like(like), torch.empty_like(like))
        return self.buffers


_WORK = _Workspace()


def _logsumexp_into(x: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """``torch.logsumexp(x, -1)`` with its one ``[B, V]`` temporary written into ``scratch``: the
    same ops in the same order (max, subtract, exp, sum, log, add), so the same bits."""
    m = x.amax(dim=-1, keepdim=True)
    m = m.masked_fill(m.abs() == float("inf"), 0)  # as torch does, so an all -inf row gives -inf
    torch.sub(x, m, out=scratch)
    return scratch.exp_().sum(dim=-1).log_().add_(m[:, 0])


def sample_tokens(
    logits: torch.Tensor, rows: list[Any], temperature: float, top_p: float, record: bool = False,
    banned: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Pick one token per row; return (tokens, log-prob of each token under softmax(raw logits),
    and when ``record`` the ``[B, 4]`` step statistics of :func:`impetus.lm.recording.step_stats`).

    ``banned`` (``[B]``, −1 = none; only with ``top_p`` 1): a token each row must not pick; it is drawn
    from the tempered distribution with that token removed and renormalised (EBD's differing proposals,
    :mod:`impetus.decoding.mh`). The recorded statistics stay those of the full distribution.

    The statistics reuse what sampling computes anyway (the raw log-normaliser, the tempered logits,
    and, under top-p, the tokens sorted by probability, whose first 20 are the raw top-20), so
    recording costs almost nothing here. Vocabulary-sized temporaries go to reused buffers.
    """
    logits = logits.float()
    a, b = _WORK.get(logits)
    lse = _logsumexp_into(logits, a)
    lse_t, idx = lse, None
    if banned is not None and (temperature == 0 or top_p < 1):
        raise ValueError("a banned token needs the model's own tempered conditional: temperature > 0, top_p 1")
    if temperature == 0:
        tok = logits.argmax(dim=-1)
    else:
        # One uniform per row from the row's own generator: inverse-CDF sampling keeps the draw
        # independent of batch composition (torch.multinomial on a batch shares one RNG stream).
        u = torch.stack([torch.rand((), generator=r.gen, dtype=torch.float64) for r in rows]).float()
        scaled = logits if temperature == 1 else torch.div(logits, temperature, out=b)
        probs = torch._softmax(scaled, -1, False, out=a)  # a: lse's scratch, free again
        if record and temperature != 1:
            lse_t = _logsumexp_into(scaled, b)  # overwrites the tempered logits, no longer needed
        if banned is not None:  # zero mass: the cdf below renormalises over the rest
            has = (banned >= 0).nonzero()[:, 0]
            probs[has, banned[has]] = 0.0
        if top_p >= 1.0:
            cdf = probs.cumsum(dim=-1)
        else:
            k = min(_TOPK_FIRST, probs.shape[-1])
            vals, idx = probs.topk(k, dim=-1)  # sorted descending
            if bool((vals.sum(dim=-1) < top_p).any()):
                vals, idx = probs.sort(dim=-1, descending=True)
            before = vals.cumsum(dim=-1) - vals  # mass of strictly more likely tokens
            vals = vals * (before < top_p)  # keeps at least the top token
            cdf = vals.cumsum(dim=-1)
        target = (u * cdf[:, -1])[:, None]
        j = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1)
        tok = (j if idx is None else idx.gather(1, j))[:, 0]
    chosen = logits.gather(1, tok[:, None])[:, 0]
    stats = None
    if record:
        k = min(DEEPCONF_TOP_K, logits.shape[-1])
        # Probabilities and raw logits order tokens alike, so the nucleus's sorted ids give the top-k.
        top = logits.gather(1, idx[:, :k]) if idx is not None and idx.shape[1] >= k else logits.topk(k, dim=-1).values
        stats = torch.stack([lse, chosen, lse - top.mean(dim=-1), lse_t], dim=1)
    return tok, chosen - lse, stats


def force_tokens(logits: torch.Tensor, rows: list[Any], toks: torch.Tensor, lps: torch.Tensor,
                 stats: torch.Tensor | None) -> None:
    """Rows with ``forced`` tokens left emit the next one instead of their choice (in place): its log-prob
    and raw logit are recorded as a sampled token's would be (the row still drew its uniform, so
    what it samples afterwards does not depend on being forced)."""
    for k, r in enumerate(rows):
        if r.forced:
            t = r.forced.pop(0)
            f = logits[k].float()
            toks[k] = t
            lps[k] = f[t] - torch.logsumexp(f, dim=-1)
            if stats is not None:
                stats[k, 1] = f[t]
