"""Learned energy models over candidate reasoning paths (EBMs), and their row-indexable inputs.

Following EORM (Jiang et al., "Energy-Based Outcome Reward Model", arXiv:2505.14999): an energy
``E(x, y)`` scores a (question, completion) pair, lower = more plausible. Two models:

- :class:`TextEBM` — a small Transformer encoder over token ids with a [CLS] scalar head (EORM).
- :class:`LatentEBM` — an MLP over a pooled hidden state of the base LM; differentiable in its input
  so V2 can follow ``-dE/dh`` (latent optimization, cf. LeCun et al. 2006 "A Tutorial on EBMs").

Both take row-indexable inputs (``idx -> tuple of tensors`` passed to ``model(*inputs(idx))``):
token ids (:class:`TokenInputs`) and vectors (:class:`VectorInputs`), so one training loop
(:mod:`impetus.learned.train`) serves both.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "TextEBMConfig", "TextEBM", "LatentEBMConfig", "LatentEBM", "encode_texts", "TokenInputs",
    "VectorInputs", "as_inputs", "distinct_rows", "score", "dropout", "Dropout",
]

# ----------------------------------------------------------------------------- models
@dataclass
class TextEBMConfig:
    """TextEBM size. ``vocab_size`` = the base tokenizer's ``len(tokenizer)``; two ids are added:
    ``pad_id = vocab_size`` and ``cls_id = vocab_size + 1`` so they never clash with BOS/EOS.

    No defaults: the sizes come from ``parameters_scorer.yml`` (the one place defaults live)."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    max_len: int
    dropout: float

    @property
    def pad_id(self) -> int:
        return self.vocab_size

    @property
    def cls_id(self) -> int:
        return self.vocab_size + 1


class TextEBM(nn.Module):
    """EORM-style energy over token ids: [CLS] + tokens -> Transformer encoder -> scalar from [CLS]."""

    def __init__(self, config: TextEBMConfig):
        super().__init__()
        self.config = config
        c = config
        self.tok = nn.Embedding(c.vocab_size + 2, c.d_model, padding_idx=c.pad_id)
        self.pos = nn.Embedding(c.max_len + 1, c.d_model)  # +1 for [CLS]
        layer = nn.TransformerEncoderLayer(
            c.d_model, c.n_heads, c.d_ff, c.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        # enable_nested_tensor=False: the fast path changes numerics between train/eval modes.
        self.encoder = nn.TransformerEncoder(layer, c.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, 1)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``input_ids``/``attention_mask`` ``[B, L]`` (L <= max_len, no [CLS]) -> energies ``[B]``."""
        b, length = input_ids.shape
        if length > self.config.max_len:
            raise ValueError(f"sequence length {length} > max_len {self.config.max_len}")
        cls = torch.full((b, 1), self.config.cls_id, dtype=input_ids.dtype, device=input_ids.device)
        ids = torch.cat([cls, input_ids], dim=1)
        keep = torch.cat([torch.ones_like(cls, dtype=torch.bool), attention_mask.to(torch.bool)], dim=1)
        pos = torch.arange(length + 1, device=ids.device)
        x = self.tok(ids) + self.pos(pos)[None]
        if self.training:
            x = self._encode_train(x, ~keep)
        else:  # in the encoder's dtype (bf16 in a copy from scoring_copy), back to fp32 for the head
            x = self._encode_for_cls(x.to(self.encoder.layers[0].linear1.weight.dtype), ~keep).float()
        return self.head(self.norm(x[:, 0])).squeeze(-1)

    def _encode_train(self, x: Tensor, pad: Tensor) -> Tensor:
        """``self.encoder`` in training mode, with :func:`dropout`'s masks instead of ``bernoulli_``'s.
        norm_first layers: ``x + drop1(attn(norm1(x)))`` (the attention weights dropped too), then
        ``+ drop2(linear2(drop(gelu(linear1(norm2(.))))))``. The same modules and weights, so a model
        saves and scores as before; equal to ``self.encoder`` when dropout is 0 (tested)."""
        for layer in self.encoder.layers:
            h = layer.norm1(x)
            x = x + dropout(_attention(layer.self_attn, h, h, pad, layer.self_attn.dropout), layer.dropout1.p)
            h = dropout(layer.activation(layer.linear1(layer.norm2(x))), layer.dropout.p)
            x = x + dropout(layer.linear2(h), layer.dropout2.p)
        return x

    def _encode_for_cls(self, x: Tensor, pad: Tensor) -> Tensor:
        """The encoder in eval mode, with its last layer computed for the [CLS] row only: the head
        reads nothing else, and that layer's other rows cost its feed-forward and its query and
        output projections for nothing. Attention goes through ``scaled_dot_product_attention``:
        ``nn.TransformerEncoderLayer``'s own eval path with a padding mask runs an explicit masked
        softmax over ``[B, heads, L, L]``, 14% of the scoring time (docs/results.md, "The TextEBM's
        scoring cost"). Equal to ``self.encoder`` up to rounding (tested)."""
        *first, last = self.encoder.layers
        for layer in first:  # norm_first: x + attn(norm1(x)), then + ff(norm2(.))
            h = layer.norm1(x)
            x = x + _attention(layer.self_attn, h, h, pad)
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))
        h = last.norm1(x)
        cls = x[:, :1] + _attention(last.self_attn, h[:, :1], h, pad)
        return cls + last.linear2(last.activation(last.linear1(last.norm2(cls))))

    def scoring_copy(self, dtype: torch.dtype) -> "TextEBM":
        """A copy for scoring (eval mode) whose encoder layers run in ``dtype``, sharing this model's
        embeddings, final norm and head, which stay fp32: the inputs are cast once at the encoder and
        its [CLS] output cast back, so only the layers' matmuls run in half precision. The encoder
        is ~2% of the weights (the embeddings are the rest), so copying it per call is cheap and no
        cached half copy can go stale when this model's weights change."""
        out = TextEBM.__new__(TextEBM)
        nn.Module.__init__(out)
        out.config = self.config
        out.tok, out.pos, out.norm, out.head = self.tok, self.pos, self.norm, self.head
        out.encoder = copy.deepcopy(self.encoder).to(dtype)
        return out.eval()


def dropout(x: Tensor, p: float) -> Tensor:
    """Inverted dropout (training only): zero each entry with probability ``p`` and scale the rest by
    ``1 / (1 - p)``, as ``F.dropout`` does. The mask comes from ``torch.rand`` on the global generator
    (which training seeds), not from ``bernoulli_``: on the AMD EPYC ``F.dropout``'s ``bernoulli_``
    was 23% of a TextEBM member's training time, and with these masks it trains about 1.2x faster
    per epoch (``benchmarks/bench_ebm_training.py``; docs/benchmarks.md, "Training the learned
    energies")."""
    if p == 0.0:
        return x
    if not 0.0 < p < 1.0:
        raise ValueError(f"dropout probability {p} is not in [0, 1)")
    return x * torch.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))


class Dropout(nn.Module):
    """``nn.Dropout`` through :func:`dropout` (no parameters: state dicts are unchanged)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p) if self.training else x


def _attention(mha: nn.MultiheadAttention, query: Tensor, kv: Tensor, pad: Tensor,
               dropout_p: float | None = None) -> Tensor:
    """``mha(query, kv, kv, key_padding_mask=pad)`` without the weights returned; ``pad`` ``[B, L]`` is
    True at padding. Scoring (``dropout_p`` None) goes through ``F.scaled_dot_product_attention``.
    Training computes the weights explicitly and drops them by :func:`dropout` (SDPA's own dropout on
    the CPU is its math path with ``bernoulli_``), also at ``dropout_p`` 0, so a training step's
    rounding does not depend on the dropout setting."""
    b, d, heads = query.shape[0], mha.embed_dim, mha.num_heads
    w, bias = mha.in_proj_weight, mha.in_proj_bias
    q = F.linear(query, w[:d], bias[:d])
    k, v = F.linear(kv, w[d:], bias[d:]).chunk(2, dim=-1)

    def split(t: Tensor) -> Tensor:  # [B, L, d] -> [B, heads, L, d / heads]
        return t.view(b, -1, heads, d // heads).transpose(1, 2)

    if dropout_p is not None:
        scores = split(q) @ split(k).transpose(-2, -1) * (d // heads) ** -0.5
        weights = scores.masked_fill(pad[:, None, None, :], float("-inf")).softmax(dim=-1)
        out = dropout(weights, dropout_p) @ split(v)
    else:
        out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=~pad[:, None, None, :])
    return mha.out_proj(out.transpose(1, 2).reshape(b, query.shape[1], d))


@dataclass
class LatentEBMConfig:
    """LatentEBM size: ``input_dim`` = the pooled hidden size of the base LM.

    No defaults: the sizes come from ``parameters_scorer.yml`` (the one place defaults live)."""

    input_dim: int
    hidden: int
    n_layers: int
    dropout: float


class LatentEBM(nn.Module):
    """MLP energy over hidden vectors: LayerNorm(input) -> [Linear, GELU, Dropout] x n -> scalar.

    The input LayerNorm makes it robust to the large, layer-dependent norms of LM hidden states;
    GELU (smooth) gives a useful ``dE/dh`` for latent optimization, unlike ReLU's piecewise zeros.
    """

    def __init__(self, config: LatentEBMConfig):
        super().__init__()
        self.config = config
        c = config
        layers: list[nn.Module] = [nn.LayerNorm(c.input_dim)]
        d = c.input_dim
        for _ in range(c.n_layers):
            layers += [nn.Linear(d, c.hidden), nn.GELU(), Dropout(c.dropout)]
            d = c.hidden
        layers.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, h: Tensor) -> Tensor:
        """``h [B, H]`` -> energies ``[B]``."""
        return self.net(h).squeeze(-1)


# ----------------------------------------------------------------------------- inputs
def encode_texts(
    tokenizer: Any, questions: Sequence[str], completions: Sequence[str], max_len: int = 256,
    pad_id: int | None = None, sep: str = "\n",
) -> tuple[Tensor, Tensor]:
    """Tokenize ``question + sep + completion`` for :class:`TextEBM` -> ``(ids, mask)`` ``[B, L]``.

    Only the base tokenizer's ids are used (no special tokens). Truncation is from the LEFT of the
    question so the completion's end — where the final answer is — is always kept; a completion
    longer than ``max_len`` keeps its last ``max_len`` tokens. Right-padded with ``pad_id``
    (default ``len(tokenizer)``, the ``pad_id`` of a ``TextEBMConfig`` with that ``vocab_size``) to the
    longest row.
    """
    if len(questions) != len(completions):
        raise ValueError("questions and completions differ in length")
    pad = len(tokenizer) if pad_id is None else pad_id
    q_ids = tokenizer(list(questions), add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    s_ids = tokenizer(sep, add_special_tokens=False)["input_ids"] if sep else []
    rows = []
    for q, c in zip(q_ids, c_ids):
        c = c[-max_len:]
        budget = max_len - len(c) - len(s_ids)
        head = (q[-budget:] + s_ids) if budget > 0 else []
        rows.append(head + c)
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


class VectorInputs:
    """Row-indexable inputs for :class:`LatentEBM`: ``inputs(idx) -> (h[idx],)``."""

    def __init__(self, h: Tensor | np.ndarray):
        self.h = torch.as_tensor(np.asarray(h) if not isinstance(h, Tensor) else h, dtype=torch.float32)

    def __len__(self) -> int:
        return self.h.shape[0]

    def __call__(self, idx: np.ndarray) -> tuple[Tensor, ...]:
        return (self.h[torch.as_tensor(idx, dtype=torch.long)],)


class TokenInputs:
    """Row-indexable inputs for :class:`TextEBM`: ``inputs(idx) -> (ids, mask)``, with the padding
    columns beyond the longest selected row trimmed (attention cost is quadratic in width)."""

    def __init__(self, ids: Tensor, mask: Tensor):
        self.ids, self.mask = ids.long(), mask.long()
        self._distinct: tuple[TokenInputs, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __call__(self, idx: np.ndarray) -> tuple[Tensor, ...]:
        i = torch.as_tensor(idx, dtype=torch.long)
        m = self.mask[i]
        width = max(1, int(m.sum(dim=1).max())) if len(i) else 1
        return (self.ids[i, :width], m[:, :width])

    def distinct(self) -> tuple["TokenInputs", np.ndarray]:
        """``(distinct rows, each row's index among them)``, found once per object: an ensemble scores
        the same inputs with every member (the rows are not expected to change after construction)."""
        if self._distinct is None:
            (ids, mask), inverse = distinct_rows((self.ids, self.mask))
            unique = self if len(ids) == len(self) else TokenInputs(ids, mask)
            unique._distinct = (unique, np.arange(len(unique)))
            self._distinct = (unique, inverse.numpy())
        return self._distinct


Inputs = Callable[[np.ndarray], tuple[Tensor, ...]]


def as_inputs(x: Any) -> Any:
    """Coerce ``Tensor``/``ndarray`` -> :class:`VectorInputs`, ``(ids, mask)`` -> :class:`TokenInputs`."""
    if isinstance(x, (VectorInputs, TokenInputs)) or (callable(x) and hasattr(x, "__len__")):
        return x
    if isinstance(x, tuple) and len(x) == 2:
        return TokenInputs(*x)
    return VectorInputs(x)


def distinct_rows(batch: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], Tensor]:
    """The distinct rows of a batch of row-aligned tensors, and each row's index among them.

    ``model(*distinct)[inverse]`` gives every row its energy while the model runs once per distinct
    row: sampled answers repeat (the default run's 800 eval candidates hold about 330 distinct ones), and
    an energy depends on its row alone. Rows are compared on all tensors together (ids and mask).
    """
    flat = torch.cat([t.reshape(len(t), -1).to(torch.float64) for t in batch], dim=1)
    if len(flat) < 2:
        return batch, torch.arange(len(flat))
    uniq, inverse = torch.unique(flat, dim=0, return_inverse=True)
    if len(uniq) == len(flat):
        return batch, torch.arange(len(flat))
    first = torch.full((len(uniq),), len(flat), dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(len(flat)), reduce="amin")
    return tuple(t[first] for t in batch), inverse


@torch.no_grad()
def score(model: nn.Module, inputs: Any, batch_size: int = 256, device: str = "cpu",
          dtype: str = "float32") -> np.ndarray:
    """Energies for every row of ``inputs`` (eval mode, no grad) as a float ``np.ndarray``.

    Repeated token rows are scored once (sampled answers repeat; the energy of a row is its own).
    ``dtype``: what a :class:`TextEBM`'s encoder layers run in (:meth:`TextEBM.scoring_copy`; the
    caller chooses it, e.g. by :func:`impetus.lm.precision.choose_dtype`); other models run as they are."""
    inputs = as_inputs(inputs)
    if isinstance(inputs, TokenInputs):
        unique, inverse = inputs.distinct()
        if unique is not inputs:
            return score(model, unique, batch_size, device, dtype)[inverse]
    # Token rows go in length order, so each batch is trimmed to rows of about its own length (the
    # TextEBM's cost grows with the padded width; docs/results.md, "The cost target").
    order = (np.argsort(inputs.mask.sum(dim=1).numpy(), kind="stable") if isinstance(inputs, TokenInputs)
             else np.arange(len(inputs)))
    was_training = model.training
    model.eval()
    run = model.scoring_copy(getattr(torch, dtype)) if isinstance(model, TextEBM) and dtype != "float32" else model
    out = []
    for s in range(0, len(inputs), batch_size):
        batch = inputs(order[s: s + batch_size])
        out.append(run(*(t.to(device) for t in batch)).float().cpu())
    model.train(was_training)
    energy = np.zeros(len(inputs), dtype=np.float32)
    if out:
        energy[order] = torch.cat(out).numpy()
    return energy


