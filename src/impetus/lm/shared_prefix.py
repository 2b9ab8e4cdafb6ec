"""Attention over a token prefix every row of a batch shares, kept once (cascade attention).

Few-shot prompts share their examples: the default arithmetic prompt is 123 tokens of which 112 are
the same for every problem, and a decoding step's attention reads each row's copy of them from the
KV cache (on a CPU that read, not the arithmetic, sets the attention's time). With the prefix kept
once, at batch 1, a row's cache holds only its own tokens, and each layer attends in two parts:
- all rows' queries against the one prefix, as one attention call (one query batch, shared keys);
- each row's queries against its own tokens, with the batch's padding mask;
merged exactly by their log-sum-exps (``o = Σ_part o_part · exp(lse_part − lse)``), as FlashInfer's
cascade inference and FlashAttention's split-KV decoding merge partial softmaxes.

Use: set the model's attention to ``ATTENTION`` (:class:`impetus.lm.hf_sampler.HFSampler` does, for a
model on SDPA), and run forwards inside ``with shared_prefix(prefix_cache):``. The sampler does for
``generate`` and for continued rows (V2's and EBD's ``continue_rows``, whose given caches then enter the
batch without the prefix they share, and whose kept caches get it back). Outside that context the
attention is transformers' SDPA path unchanged, so teacher-forced scoring, choices and Power-SMC's
loop (which do not enter it) are untouched.
Only for models whose every layer attends to the whole cache (a sliding window counts cache columns)
and on CPU (the merge uses the CPU kernel that returns its log-sum-exp).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

#: The attention implementation's name (registered with transformers at import).
ATTENTION = "impetus_shared_prefix"


class _Active(threading.local):
    prefix: Any = None  # the DynamicCache of the shared prefix (batch 1), or None
    # The last mask converted (transformers passes one mask object to every layer of a forward): the
    # object itself (held, so no later mask can share its identity), and what it became.
    mask_of: Any = None
    mask: tuple[torch.Tensor, torch.Tensor] | None = None


_ACTIVE = _Active()


def common_prefix(seqs: list[list[int]]) -> int:
    """Length of the longest token prefix shared by all ``seqs``."""
    first, n = seqs[0], min(len(q) for q in seqs)
    for k in range(n):
        t = first[k]
        if any(q[k] != t for q in seqs):
            return k
    return n


def distinct(seqs: list[list[int]]) -> list[list[int]]:
    """The distinct non-empty token sequences of ``seqs``, in first-seen order (what :func:`shared_len` takes)."""
    return list({tuple(q): q for q in seqs if q}.values())


def shared_len(seqs: list[list[int]], min_len: int) -> int:
    """Tokens all the distinct prompts ``seqs`` share, at most one fewer than the shortest (its last
    token's logits are needed); 0 below ``min_len`` (not worth a forward) or for one prompt."""
    n = min(common_prefix(seqs), min(len(q) for q in seqs) - 1) if len(seqs) > 1 else 0
    return n if n >= min_len else 0


def prefix_of_pasts(config: Any, pasts: list[list[tuple[torch.Tensor, torch.Tensor]]], n: int) -> Any:
    """A batch-1 cache of the first ``n`` positions that the row caches ``pasts`` (continued rows: EBD's
    proposals, V2's regenerations) share, viewing the first row's (no copy, no forward). Each row's
    cache holds those positions for the same tokens at the same positions, so any row's are the
    prefix's keys and values."""
    from transformers import DynamicCache

    prefix = DynamicCache(config=config)
    for layer, (k, v) in zip(prefix.layers, pasts[0]):
        layer.keys, layer.values = k[:, :, :n], v[:, :, :n]
        layer.dtype, layer.device, layer.is_initialized = k.dtype, k.device, True
    return prefix


@contextmanager
def shared_prefix(prefix: Any) -> Iterator[None]:
    """Forwards inside attend to ``prefix`` (a batch-1 cache whose layer ``i`` holds the shared
    tokens' keys and values) before each row's own cache; ``None``: plain SDPA."""
    before, _ACTIVE.prefix = _ACTIVE.prefix, prefix
    try:
        yield
    finally:
        _ACTIVE.prefix, _ACTIVE.mask_of, _ACTIVE.mask = before, None, None


def _flash(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
           scale: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(output, log-sum-exp of the scaled scores)`` of one attention call (ATen's CPU kernel)."""
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, 0.0, False, attn_mask=mask, scale=scale)
    return out, lse


def _packed_mask(mask: torch.Tensor, b: int, g: int, q: int, s: int, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``[B or 1, 1, q, S]`` keep-mask (bool) or additive mask as the additive ``[B, 1, g·q, S]`` mask
    of the packed queries, and which packed queries see none of their own keys (``[B, 1, g·q]``);
    converted once per forward, not per layer."""
    if _ACTIVE.mask_of is mask and _ACTIVE.mask is not None and _ACTIVE.mask[0].shape == (b, 1, g * q, s):
        return _ACTIVE.mask
    add = mask.to(dtype) if mask.dtype != torch.bool else torch.zeros(
        mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    add = add.expand(b, 1, q, s).unsqueeze(2).expand(b, 1, g, q, s).reshape(b, 1, g * q, s)
    _ACTIVE.mask_of, _ACTIVE.mask = mask, (add, torch.isneginf(add).all(dim=-1))
    return _ACTIVE.mask


def attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, scaling: float | None = None, **kwargs: Any
              ) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: ``query [B, H, q, D]`` against the active shared prefix and
    the rows' own ``key``/``value [B, Hkv, S, D]``; returns ``[B, q, H, D]`` as SDPA's does."""
    prefix = _ACTIVE.prefix
    if prefix is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    layer = prefix.layers[module.layer_idx]
    b, heads, q, d = query.shape
    kv = key.shape[1]
    g = heads // kv  # query heads per key head: head h = k * g + j, as repeat_kv orders them
    rows = query.reshape(b, kv, g * q, d)  # each key head's queries, packed (no repeat of the keys)
    shared = rows.transpose(0, 1).reshape(1, kv, b * g * q, d)  # every row's, against the prefix
    o1, l1 = _flash(shared, layer.keys, layer.values, None, scaling)
    o1 = o1.reshape(kv, b, g * q, d).transpose(0, 1)
    l1 = l1.reshape(kv, b, g * q).transpose(0, 1)
    s = key.shape[2]
    if attention_mask is None and q > 1:
        # transformers leaves the mask out when SDPA's is_causal can stand in for it (no padding):
        # query t sees its own keys up to its position, the last q of them being the queries' own.
        attention_mask = torch.ones(q, s, dtype=torch.bool, device=query.device).tril(diagonal=s - q)[None, None]
    mask = dead = None
    if attention_mask is not None:  # the same for every head: repeated for the packed g
        mask, dead = _packed_mask(attention_mask, b, g, q, s, query.dtype)
    o2, l2 = _flash(rows, key, value, mask, scaling)
    if dead is not None:
        # A query that sees none of its own keys (a left-padding position while prefilling) gets
        # output 0 and log-sum-exp 0 from the kernel; its part must weigh nothing: lse −inf.
        l2 = l2.masked_fill(dead, float("-inf"))
    # o = o1·e^l1/(e^l1 + e^l2) + o2·e^l2/(e^l1 + e^l2) = lerp(o1, o2, sigmoid(l2 − l1))
    # (in fp32: a bf16 weight would add its own 0.4% rounding to every merged output)
    out = torch.lerp(o1.float(), o2.float(), torch.sigmoid(l2 - l1).unsqueeze(-1)).to(query.dtype)
    out = out.reshape(b, kv, g, q, d).reshape(b, heads, q, d)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)
