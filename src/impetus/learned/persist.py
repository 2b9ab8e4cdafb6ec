"""Persistence of learned energies as plain data (no pickle): config + tensors.

``ebm_to_dict`` gives ``{"format", "kind", "config", "state_dict"}`` made of str/int/float/tensor
only, so ``torch.load(weights_only=True)`` (the safe unpickler) reads it back.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from impetus.learned.ensemble import EnsembleEBM
from impetus.learned.models import LatentEBM, LatentEBMConfig, TextEBM, TextEBMConfig

__all__ = ["ebm_to_dict", "ebm_from_dict", "save_ebm", "load_ebm"]

_KINDS: dict[str, tuple[type[nn.Module], type]] = {
    "TextEBM": (TextEBM, TextEBMConfig),
    "LatentEBM": (LatentEBM, LatentEBMConfig),
}


def ebm_to_dict(model: nn.Module) -> dict[str, Any]:
    """``{"kind", "config", "state_dict"}`` — plain data, loadable with ``torch.load(weights_only=True)``.

    An :class:`~impetus.learned.ensemble.EnsembleEBM` is ``kind: EnsembleEBM`` with its members'
    kind and config, one state dict per member, the scales, names and fold members' problems."""
    kind = type(model).__name__
    if isinstance(model, EnsembleEBM):
        members = [ebm_to_dict(m) for m in model.members]
        return {"format": 1, "kind": kind, "member_kind": model.member_kind, "config": members[0]["config"],
                "members": [m["state_dict"] for m in members], "mu": model.mu.detach().cpu().clone(),
                "sd": model.sd.detach().cpu().clone(), "out": model.out.detach().cpu().clone(),
                "names": list(model.names),
                "trained_on": [None if t is None else sorted(t) for t in model.trained_on]}
    if kind not in _KINDS:
        raise TypeError(f"not a known EBM: {kind}")
    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {"format": 1, "kind": kind, "config": asdict(model.config), "state_dict": sd}


def ebm_from_dict(d: dict[str, Any]) -> nn.Module:
    """Rebuild a model from :func:`ebm_to_dict` output (eval mode)."""
    if d["kind"] == "EnsembleEBM":
        members = [ebm_from_dict({"kind": d["member_kind"], "config": d["config"], "state_dict": sd})
                   for sd in d["members"]]
        return EnsembleEBM(members, d["mu"].tolist(), d["sd"].tolist(), out=tuple(d["out"].tolist()),
                           names=d["names"], trained_on=d["trained_on"]).eval()
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
