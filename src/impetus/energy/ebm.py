"""Learned energies (EBMs) over candidate reasoning paths, trained with a group-wise pairwise loss.

Following EORM (Jiang et al., "Energy-Based Outcome Reward Model", arXiv:2505.14999): an energy
``E(x, y)`` scores a (question, completion) pair; within each problem every right completion
should have lower energy than every wrong one, trained with the Bradley–Terry / RankNet loss
``softplus(E_right - E_wrong)`` (Burges et al., ICML 2005). Two models share one training loop:

- :class:`TextEBM` — a small Transformer encoder over token ids with a [CLS] scalar head (EORM).
- :class:`LatentEBM` — an MLP over a pooled hidden state of the base LM; differentiable in its input
  so V2 can follow ``-dE/dh`` (latent optimization, cf. LeCun et al. 2006 "A Tutorial on EBMs").

The loop is generic: it takes an ``inputs`` callable ``idx -> tuple of tensors`` passed to
``model(*inputs(idx))``, so token ids (:class:`TokenInputs`) and vectors (:class:`VectorInputs`)
use the same code.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = [
    "pairwise_loss", "group_pair_metrics", "TextEBMConfig", "TextEBM", "LatentEBMConfig", "LatentEBM",
    "encode_texts", "TokenInputs", "VectorInputs", "as_inputs", "TrainConfig", "TrainResult",
    "train_ebm", "score", "save_ebm", "load_ebm", "ebm_to_dict", "ebm_from_dict",
]


# ----------------------------------------------------------------------------- loss
def pairwise_loss(energies: Tensor, group_ids: Tensor, labels: Tensor) -> Tensor:
    """Mean over groups of the mean over right x wrong pairs of ``softplus(E_right - E_wrong)``.

    Vectorized with an ``M x M`` pair mask (fine for minibatches of whole groups; memory is
    O(M^2), so score large sets group-by-group with :func:`group_pair_metrics`). Groups with no
    (right, wrong) pair contribute nothing; with no pair at all the result is a zero that still
    carries the graph (so ``backward`` is a no-op rather than an error).
    """
    labels = labels.to(torch.bool)
    same = group_ids[:, None] == group_ids[None, :]
    pair = same & labels[:, None] & ~labels[None, :]  # row i right, column j wrong
    if not bool(pair.any()):
        return energies.sum() * 0.0
    diff = energies[:, None] - energies[None, :]
    # where() rather than multiply: a huge diff on a non-pair must not leak inf*0 = nan.
    row_sum = torch.where(pair, F.softplus(diff), torch.zeros_like(diff)).sum(dim=1)
    row_cnt = pair.sum(dim=1).to(energies.dtype)
    _, inv = torch.unique(group_ids, return_inverse=True)
    n_g = int(inv.max()) + 1
    g_sum = torch.zeros(n_g, dtype=energies.dtype, device=energies.device).index_add(0, inv, row_sum)
    g_cnt = torch.zeros(n_g, dtype=energies.dtype, device=energies.device).index_add(0, inv, row_cnt)
    valid = g_cnt > 0
    return (g_sum[valid] / g_cnt[valid]).mean()


def group_pair_metrics(energies: np.ndarray, group_ids: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Per-group pairwise loss and pair accuracy (ties = 0.5), averaged over groups with pairs.

    Loops over groups in NumPy, so memory is O(max group size^2) — used for validation.
    """
    e, g, y = np.asarray(energies, float), np.asarray(group_ids), np.asarray(labels, bool)
    losses, accs = [], []
    for gid in np.unique(g):
        m = g == gid
        r, w = e[m & y], e[m & ~y]
        if r.size == 0 or w.size == 0:
            continue
        d = r[:, None] - w[None, :]
        losses.append(float(np.logaddexp(0.0, d).mean()))  # softplus, overflow-safe
        accs.append(float(((d < 0) + 0.5 * (d == 0)).mean()))
    if not losses:
        return {"loss": float("nan"), "pair_acc": float("nan")}
    return {"loss": float(np.mean(losses)), "pair_acc": float(np.mean(accs))}


# ----------------------------------------------------------------------------- models
@dataclass
class TextEBMConfig:
    """TextEBM size. ``vocab_size`` = the base tokenizer's ``len(tokenizer)``; two ids are added:
    ``pad_id = vocab_size`` and ``cls_id = vocab_size + 1`` so they never clash with BOS/EOS."""

    vocab_size: int
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256
    max_len: int = 256
    dropout: float = 0.1

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
        x = self.encoder(x, src_key_padding_mask=~keep)
        return self.head(self.norm(x[:, 0])).squeeze(-1)


@dataclass
class LatentEBMConfig:
    """LatentEBM size: ``input_dim`` = the pooled hidden size of the base LM."""

    input_dim: int
    hidden: int = 256
    n_layers: int = 2
    dropout: float = 0.1


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
            layers += [nn.Linear(d, c.hidden), nn.GELU(), nn.Dropout(c.dropout)]
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
    (default ``len(tokenizer)``, i.e. ``TextEBMConfig(vocab_size=len(tokenizer)).pad_id``) to the
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

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __call__(self, idx: np.ndarray) -> tuple[Tensor, ...]:
        i = torch.as_tensor(idx, dtype=torch.long)
        m = self.mask[i]
        width = max(1, int(m.sum(dim=1).max())) if len(i) else 1
        return (self.ids[i, :width], m[:, :width])


Inputs = Callable[[np.ndarray], tuple[Tensor, ...]]


def as_inputs(x: Any) -> Any:
    """Coerce ``Tensor``/``ndarray`` -> :class:`VectorInputs`, ``(ids, mask)`` -> :class:`TokenInputs`."""
    if isinstance(x, (VectorInputs, TokenInputs)) or (callable(x) and hasattr(x, "__len__")):
        return x
    if isinstance(x, tuple) and len(x) == 2:
        return TokenInputs(*x)
    return VectorInputs(x)


@torch.no_grad()
def score(model: nn.Module, inputs: Any, batch_size: int = 256, device: str = "cpu") -> np.ndarray:
    """Energies for every row of ``inputs`` (eval mode, no grad) as a float ``np.ndarray``."""
    inputs = as_inputs(inputs)
    was_training = model.training
    model.eval()
    out = []
    for s in range(0, len(inputs), batch_size):
        batch = inputs(np.arange(s, min(s + batch_size, len(inputs))))
        out.append(model(*(t.to(device) for t in batch)).float().cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


# ----------------------------------------------------------------------------- training
@dataclass
class TrainConfig:
    """Training loop settings. ``batch_groups`` whole groups per step; early stopping on val loss."""

    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_groups: int = 16
    patience: int = 3
    val_fraction: float = 0.2
    seed: int = 0
    max_seconds: float | None = None
    grad_clip: float | None = 1.0
    device: str = "cpu"
    progress: bool = True


@dataclass
class TrainResult:
    model: nn.Module  # best-val-loss state restored, in eval mode
    history: list[dict[str, Any]]
    best_epoch: int
    seconds: float
    train_groups: list[Any] = field(default_factory=list)
    val_groups: list[Any] = field(default_factory=list)


def _split_groups(groups: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split whole groups (never candidates of one problem across sides) into train/val."""
    perm = np.random.default_rng(seed).permutation(groups)
    n_val = int(round(val_fraction * len(groups))) if val_fraction > 0 else 0
    n_val = min(max(n_val, 1 if val_fraction > 0 else 0), len(groups) - 1)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def train_ebm(
    model: nn.Module, inputs: Any, group_ids: Sequence[Any] | np.ndarray, labels: Sequence[bool] | np.ndarray,
    config: TrainConfig | None = None,
) -> TrainResult:
    """Train any EBM with the group-wise pairwise loss (EORM); works for TextEBM and LatentEBM.

    ``inputs``: row-indexable inputs (``TokenInputs``, ``VectorInputs``, or anything
    :func:`as_inputs` accepts), one row per candidate; ``group_ids`` (problem ids) and ``labels``
    (correct) align with those rows. Groups — not candidates — are split into train/val by
    ``config.seed``; each step sees ``batch_groups`` whole groups. Stops early when val loss has not
    improved for ``patience`` epochs or ``max_seconds`` elapse; the best epoch's weights are
    restored. Deterministic for a fixed seed (torch RNG is forked, so the caller's is untouched).
    """
    cfg = config or TrainConfig()
    inputs = as_inputs(inputs)
    gids_raw = np.asarray(group_ids)
    y = np.asarray(labels, dtype=bool)
    if not (len(gids_raw) == len(y) == len(inputs)):
        raise ValueError(f"inputs ({len(inputs)}), group_ids ({len(gids_raw)}), labels ({len(y)}) differ")
    uniq, gids = np.unique(gids_raw, return_inverse=True)  # dense ints for the tensor loss
    train_g, val_g = _split_groups(np.arange(len(uniq)), cfg.val_fraction, cfg.seed)
    rows_of = {g: np.flatnonzero(gids == g) for g in range(len(uniq))}
    val_rows = np.concatenate([rows_of[g] for g in val_g]) if len(val_g) else np.zeros(0, dtype=int)
    model.to(cfg.device)
    t0 = time.perf_counter()
    history: list[dict[str, Any]] = []
    best = (float("inf"), -1, copy.deepcopy(model.state_dict()))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        bar = tqdm(range(cfg.epochs), desc=f"train {type(model).__name__}", disable=not cfg.progress)
        for epoch in bar:
            model.train()
            order = np.random.default_rng([cfg.seed, epoch]).permutation(train_g)
            losses, out_of_time = [], False
            for s in range(0, len(order), cfg.batch_groups):
                idx = np.concatenate([rows_of[g] for g in order[s : s + cfg.batch_groups]])
                e = model(*(t.to(cfg.device) for t in inputs(idx)))
                loss = pairwise_loss(e, torch.as_tensor(gids[idx]), torch.as_tensor(y[idx]))
                opt.zero_grad()
                loss.backward()
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                losses.append(loss.item())
                if cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds:
                    out_of_time = True
                    break
            rec: dict[str, Any] = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan")}
            if len(val_rows):
                ev = score(model, _Subset(inputs, val_rows), device=cfg.device)
                pm = group_pair_metrics(ev, gids[val_rows], y[val_rows])
                yv = y[val_rows]
                rec["val_loss"], rec["val_pair_acc"] = pm["loss"], pm["pair_acc"]
                rec["val_auroc"] = float(roc_auc_score(yv, -ev)) if 0 < yv.sum() < len(yv) else None
            else:
                rec.update(val_loss=float("nan"), val_pair_acc=float("nan"), val_auroc=None)
            history.append(rec)
            # Without a usable val set, fall back to the train loss for model selection.
            crit = rec["val_loss"] if np.isfinite(rec["val_loss"]) else rec["train_loss"]
            if crit < best[0]:
                best = (crit, epoch, copy.deepcopy(model.state_dict()))
            bar.set_postfix(train=f"{rec['train_loss']:.4f}", val=f"{rec['val_loss']:.4f}")
            if epoch - best[1] >= cfg.patience or out_of_time:
                break
    model.load_state_dict(best[2])
    model.eval()
    return TrainResult(
        model=model, history=history, best_epoch=best[1], seconds=time.perf_counter() - t0,
        train_groups=[uniq[g].item() if hasattr(uniq[g], "item") else uniq[g] for g in train_g],
        val_groups=[uniq[g].item() if hasattr(uniq[g], "item") else uniq[g] for g in val_g],
    )


class _Subset:
    """Rows ``rows`` of another inputs object, re-indexed from 0 (for scoring the val split)."""

    def __init__(self, inputs: Any, rows: np.ndarray):
        self.inputs, self.rows = inputs, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __call__(self, idx: np.ndarray) -> tuple[Tensor, ...]:
        return self.inputs(self.rows[idx])


# ----------------------------------------------------------------------------- persistence
_KINDS: dict[str, tuple[type[nn.Module], type]] = {
    "TextEBM": (TextEBM, TextEBMConfig),
    "LatentEBM": (LatentEBM, LatentEBMConfig),
}


def ebm_to_dict(model: nn.Module) -> dict[str, Any]:
    """``{"kind", "config", "state_dict"}`` — plain data, loadable with ``torch.load(weights_only=True)``."""
    kind = type(model).__name__
    if kind not in _KINDS:
        raise TypeError(f"not a known EBM: {kind}")
    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {"format": 1, "kind": kind, "config": asdict(model.config), "state_dict": sd}


def ebm_from_dict(d: dict[str, Any]) -> nn.Module:
    """Rebuild a model from :func:`ebm_to_dict` output (eval mode)."""
    cls, cfg_cls = _KINDS[d["kind"]]
    model = cls(cfg_cls(**d["config"]))
    model.load_state_dict(d["state_dict"])
    return model.eval()


def save_ebm(model: nn.Module, path: str | Path) -> None:
    """Save config + weights in one file (``torch.save`` of a plain dict)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(ebm_to_dict(model), str(path))


def load_ebm(path: str | Path, map_location: str = "cpu") -> nn.Module:
    """Load a model written by :func:`save_ebm` (safe ``weights_only`` unpickling)."""
    return ebm_from_dict(torch.load(str(path), map_location=map_location, weights_only=True))
