"""KV-cache layer that grows in place, for the sampler's decoding loop.

``DynamicLayer.update`` concatenates each new token onto the whole cache (a full copy per layer per
step), which dominates decoding time with long few-shot prompts. ``GrowLayer`` keeps spare room
along the sequence dimension and writes new tokens in place, returning a view of the filled part.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

@lru_cache(maxsize=None)
def _cache_kwarg(forward_cls: type) -> str:
    """The name a model class's ``forward`` takes its KV cache under: ``cache`` since transformers
    5.2x (which deprecates ``past_key_values`` and drops it in 5.40), ``past_key_values`` before."""
    params = inspect.signature(forward_cls.forward).parameters
    if "cache" in params or "past_key_values" in params:
        return "cache" if "cache" in params else "past_key_values"
    # a wrapper taking **kwargs: the name its wrapped model takes in this transformers version
    from transformers.utils import generic

    return "cache" if hasattr(generic, "_BCCacheNameMeta") else "past_key_values"


def forward(model: Any, cache: Any, **kwargs: Any) -> Any:
    """``model(**kwargs)`` with ``cache`` passed under the name this transformers version takes,
    so neither the old nor the new version warns."""
    return model(**{_cache_kwarg(type(model)): cache}, **kwargs)


def out_cache(out: Any) -> Any:
    """The KV cache a forward returned (``out.cache`` on new transformers, ``past_key_values`` on old)."""
    return out["cache"] if "cache" in out else out["past_key_values"]


# Spare sequence room a cache layer allocates when it (re)builds its buffers: at least this many
# positions, or a quarter of the current length if more (amortised growth).
_SPARE_MIN = 64


def _spare(n: int) -> int:
    return max(_SPARE_MIN, n // 4)


class GrowLayer(DynamicLayer):
    """A ``DynamicLayer`` whose key/value buffers have spare capacity along the sequence dim.

    ``update`` writes new positions in place (growing the buffers by copying only when full) and
    ``keys``/``values`` are views of the filled part, so a decode step no longer copies the whole
    cache. Assigning ``keys``/``values`` (as the sampler's pad/trim code and the base class do)
    stores the tensor as a buffer without spare room. The filled length is that of ``keys``.
    """

    def __init__(self) -> None:
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._n = 0
        super().__init__()

    def _view(self, buf: torch.Tensor | None) -> torch.Tensor | None:
        return buf if buf is None or buf.dim() != 4 else buf[:, :, : self._n]

    @property  # type: ignore[override]
    def keys(self) -> torch.Tensor | None:
        return self._view(self._k)

    @keys.setter
    def keys(self, t: torch.Tensor | None) -> None:
        self._k = t
        self._n = t.shape[-2] if t is not None and t.dim() == 4 else 0

    @property  # type: ignore[override]
    def values(self) -> torch.Tensor | None:
        return self._view(self._v)

    @values.setter
    def values(self, t: torch.Tensor | None) -> None:
        self._v = t

    def _store(self, k: torch.Tensor, v: torch.Tensor, n: int) -> None:
        self._k, self._v, self._n = k, v, n

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.dtype, self.device = key_states.dtype, key_states.device
            self.is_initialized = True
        k, n, add = self._k, self._n, key_states.shape[-2]
        if k is None or k.dim() != 4 or n == 0:  # first fill: allocate with spare room
            b, h, _, d = key_states.shape
            cap = add + _spare(add)
            self._k = key_states.new_empty((b, h, cap, d))
            self._v = value_states.new_empty((b, h, cap, value_states.shape[-1]))
        elif k.shape[0] != key_states.shape[0] or k.shape[1] != key_states.shape[1]:
            # unexpected shapes: behave exactly like DynamicLayer
            self.keys = torch.cat([self.keys, key_states], dim=-2)
            self.values = torch.cat([self.values, value_states], dim=-2)
            return self.keys, self.values
        elif n + add > k.shape[-2]:  # full: grow (one copy, amortised by the spare room)
            cap = n + add + _spare(n + add)
            nk = k.new_empty((k.shape[0], k.shape[1], cap, k.shape[3]))
            nv = self._v.new_empty((k.shape[0], self._v.shape[1], cap, self._v.shape[3]))
            nk[:, :, :n] = k[:, :, :n]
            nv[:, :, :n] = self._v[:, :, :n]
            self._k, self._v = nk, nv
        self._k[:, :, n : n + add] = key_states
        self._v[:, :, n : n + add] = value_states
        self._n = n + add
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep rows ``indices``; the gather copies the spare room too, so it is kept."""
        self.compact(indices, 0)

    def compact(self, indices: torch.Tensor, start: int) -> None:
        """Keep rows ``indices`` and positions from ``start`` on (one gather, spare room kept)."""
        if self._k is None or self._k.dim() != 4 or self._n == 0:
            return
        self._store(self._k[indices, :, start:], self._v[indices, :, start:], self._n - start)

    @classmethod
    def stack(cls, parts: list[tuple[torch.Tensor, torch.Tensor]], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Buffers holding ``parts`` (k, v) stacked along the batch, each left-padded with zeros to
        ``length``, with spare room after; one copy per part."""
        k0, v0 = parts[0]
        b = sum(k.shape[0] for k, _ in parts)
        cap = length + _spare(length)
        nk = k0.new_empty((b, k0.shape[1], cap, k0.shape[3]))
        nv = v0.new_empty((b, v0.shape[1], cap, v0.shape[3]))
        r = 0
        for k, v in parts:
            pad, e = length - k.shape[-2], r + k.shape[0]
            nk[r:e, :, pad:length] = k
            nv[r:e, :, pad:length] = v
            if pad:  # masked positions must hold finite values (0 * NaN would leak through SDPA)
                nk[r:e, :, :pad] = 0
                nv[r:e, :, :pad] = 0
            r = e
        return nk, nv


#: One sequence's KV cache, detached from any batch: per layer ``(keys, values)``, ``[1, H, L, D]``.
RowPast = list[tuple[torch.Tensor, torch.Tensor]]


def row_past(layers: list[Any], mask: torch.Tensor, row: int, head: list[Any] | None = None) -> RowPast:
    """Row ``row`` of a batched cache without its padding columns (those with ``mask == 0``), after
    ``head``'s keys and values when given (a batch-1 cache's layers: the shared prefix the batch
    attended apart, :mod:`impetus.lm.shared_prefix`), so the row's cache is whole again.

    A copy (index selection), so it outlives the batch's buffers and later compactions.
    """
    cols = mask[row].nonzero()[:, 0]
    if head is None:
        return [(layer.keys[row : row + 1, :, cols].clone(), layer.values[row : row + 1, :, cols].clone())
                for layer in layers]
    return [(torch.cat([h.keys, layer.keys[row : row + 1, :, cols]], dim=-2),
             torch.cat([h.values, layer.values[row : row + 1, :, cols]], dim=-2)) for h, layer in zip(head, layers)]


def stack_pasts(pasts: list[RowPast], lengths: list[int], start: int = 0) -> tuple[list[GrowLayer], torch.Tensor]:
    """Cache layers holding positions ``start .. lengths[i] − 1`` of each ``pasts[i]`` (``start`` > 0:
    a prefix they share is attended apart), left-padded to the longest, and their ``[B, L]`` mask
    (1 = real position).

    Keys were rotated (RoPE) at their absolute positions when they were computed, so left padding
    does not change them; the next tokens' positions must continue at ``lengths[i]``.
    """
    lengths = [n - start for n in lengths]
    width = max(lengths)
    layers = []
    for li in range(len(pasts[0])):
        parts = [(p[li][0][:, :, start : start + n], p[li][1][:, :, start : start + n]) for p, n in zip(pasts, lengths)]
        layer = GrowLayer()
        k, v = GrowLayer.stack(parts, width)
        layer.dtype, layer.device, layer.is_initialized = k.dtype, k.device, True
        layer._store(k, v, width)
        layers.append(layer)
    mask = torch.zeros((len(pasts), width), dtype=torch.long, device=pasts[0][0][0].device)
    for i, n in enumerate(lengths):
        mask[i, width - n :] = 1
    return layers, mask


def mergeable(cache: Any) -> bool:
    """Padding/concatenating caches is only written for plain full-attention layers."""
    return all(type(layer) in (DynamicLayer, GrowLayer) for layer in cache.layers)


def compact_layers(cache: Any, sel: torch.Tensor, start: int) -> None:
    """Keep batch rows ``sel`` and positions from ``start`` on in every (mergeable) layer."""
    for layer in cache.layers:
        if isinstance(layer, GrowLayer):
            layer.compact(sel, start)
        else:
            layer.keys = layer.keys[sel, :, start:]
            layer.values = layer.values[sel, :, start:]


def stack_caches(cache: Any, mask: torch.Tensor, c2: Any, m2: torch.Tensor) -> torch.Tensor:
    """Append the rows of ``c2`` to ``cache`` (left-padding the shorter one); return the mask."""
    la, lb = mask.shape[1], m2.shape[1]
    length = max(la, lb)
    for a, b in zip(cache.layers, c2.layers):
        if isinstance(a, GrowLayer):
            k, v = GrowLayer.stack([(a.keys, a.values), (b.keys, b.values)], length)
            a._store(k, v, length)
        else:
            ka, va = F.pad(a.keys, (0, 0, length - la, 0)), F.pad(a.values, (0, 0, length - la, 0))
            kb, vb = F.pad(b.keys, (0, 0, length - lb, 0)), F.pad(b.values, (0, 0, length - lb, 0))
            a.keys, a.values = torch.cat([ka, kb]), torch.cat([va, vb])
    return torch.cat([F.pad(mask, (length - la, 0)), F.pad(m2, (length - lb, 0))])


def copy_rows(cache: Any, dst: torch.Tensor, src: torch.Tensor) -> None:
    """Batch rows ``dst`` of every layer become copies of rows ``src``, in place: only the rows that
    change are written (Power-SMC's resampling, :mod:`impetus.lm.hf_particles`). All of ``src`` is
    read before anything is written, so a row may be both a source and a destination."""
    for layer in cache.layers:
        k, v = (layer._k, layer._v) if isinstance(layer, GrowLayer) else (layer.keys, layer.values)
        k[dst] = k[src]
        v[dst] = v[src]
