"""The EORM pairwise training loop shared by every learned energy.

Within each problem every right completion should have lower energy than every wrong one, trained
with the Bradley–Terry / RankNet loss ``softplus(E_right - E_wrong)`` (Burges et al., ICML 2005;
EORM, arXiv:2505.14999), averaged over pairs then over problems.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn
from tqdm.auto import tqdm

from impetus.learned.models import TokenInputs, as_inputs, distinct_rows, score

__all__ = ["pairwise_loss", "group_pair_metrics", "TrainConfig", "TrainResult", "train_ebm"]

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



# ----------------------------------------------------------------------------- training
@dataclass
class TrainConfig:
    """Training loop settings. ``batch_groups`` whole groups per step; early stopping on val loss.

    The tunable fields have no defaults: their values come from ``parameters_scorer.yml``
    (:class:`impetus.framework.config.EBMTrainParams`), the one place defaults live.
    """

    epochs: int
    lr: float
    weight_decay: float
    batch_groups: int
    patience: int
    val_fraction: float
    seed: int = 0
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
    config: TrainConfig,
) -> TrainResult:
    """Train any EBM with the group-wise pairwise loss (EORM); works for TextEBM and LatentEBM.

    ``inputs``: row-indexable inputs (``TokenInputs``, ``VectorInputs``, or anything
    :func:`as_inputs` accepts), one row per candidate; ``group_ids`` (problem ids) and ``labels``
    (correct) align with those rows. Groups — not candidates — are split into train/val by
    ``config.seed``; each step sees ``batch_groups`` whole groups. Stops early when val loss has not
    improved for ``patience`` epochs, at the latest after ``epochs``; the best epoch's weights are
    restored. Repeated rows in a step run the model once (:func:`distinct_rows`): the loss is the
    same as running every row, except that repeats share one dropout mask. Deterministic for a fixed
    seed on any machine: no wall-clock budget, so the number of epochs never depends on the
    machine's speed (issue 25); torch RNG is forked, so the caller's is untouched.
    """
    cfg = config
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
        # fused: one pass over each parameter per step, not one per Adam term; the TextEBM's token
        # table (the base vocabulary x d_model) is most of its parameters and of its step time.
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                fused=_fused_ok(model))
        bar = tqdm(range(cfg.epochs), desc=f"train {type(model).__name__}", disable=not cfg.progress)
        for epoch in bar:
            model.train()
            order = np.random.default_rng([cfg.seed, epoch]).permutation(train_g)
            losses = []
            for s in range(0, len(order), cfg.batch_groups):
                idx = np.concatenate([rows_of[g] for g in order[s : s + cfg.batch_groups]])
                batch, inverse = distinct_rows(inputs(idx))
                e = model(*(t.to(cfg.device) for t in batch))[inverse.to(cfg.device)]
                loss = pairwise_loss(e, torch.as_tensor(gids[idx]), torch.as_tensor(y[idx]))
                opt.zero_grad()
                loss.backward()
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                losses.append(loss.item())
            rec: dict[str, Any] = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan")}
            if len(val_rows):
                ev = score(model, _subset(inputs, val_rows), device=cfg.device)
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
            if epoch - best[1] >= cfg.patience:
                break
    model.load_state_dict(best[2])
    model.eval()
    return TrainResult(
        model=model, history=history, best_epoch=best[1], seconds=time.perf_counter() - t0,
        train_groups=[uniq[g].item() if hasattr(uniq[g], "item") else uniq[g] for g in train_g],
        val_groups=[uniq[g].item() if hasattr(uniq[g], "item") else uniq[g] for g in val_g],
    )


def _fused_ok(model: nn.Module) -> bool:
    """Fused AdamW needs every parameter floating point on a device torch fuses it for."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in model.parameters())


def _subset(inputs: Any, rows: np.ndarray) -> Any:
    """Rows ``rows`` of ``inputs``; token rows stay :class:`TokenInputs` so :func:`score` can sort and
    deduplicate them."""
    if isinstance(inputs, TokenInputs):
        return TokenInputs(inputs.ids[rows], inputs.mask[rows])
    return _Subset(inputs, rows)


class _Subset:
    """Rows ``rows`` of another inputs object, re-indexed from 0 (for scoring the val split)."""

    def __init__(self, inputs: Any, rows: np.ndarray):
        self.inputs, self.rows = inputs, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __call__(self, idx: np.ndarray) -> tuple[Tensor, ...]:
        return self.inputs(self.rows[idx])


