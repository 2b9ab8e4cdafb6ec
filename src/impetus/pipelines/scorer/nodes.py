"""scorer: train the learned energies (TextEBM, LatentEBM, HybridEnergy) on the mined train groups."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from impetus.config import EBMTrainParams, ScorerParams, parse
from impetus.energy.ebm import TrainConfig, TrainResult, ebm_to_dict
from impetus.energy.hybrid import HybridConfig
from impetus.energy.learned import (
    LEARNED,
    LearnedScorers,
    add_learned_energies,
    energy_columns,
    fit_hybrid,
    fit_latent_ebm,
    fit_text_ebm,
)
from impetus.lm.loading import load_tokenizer

logger = logging.getLogger(__name__)


def _train_config(p: EBMTrainParams, seed: int, progress: bool) -> TrainConfig:
    return TrainConfig(**p.model_dump(), seed=seed, progress=progress)


def _history_metrics(name: str, result: TrainResult) -> dict[str, list[dict]]:
    """Per-epoch loss curves for MLflow (one step per epoch) plus the best epoch and seconds."""
    out: dict[str, list[dict]] = {}
    for rec in result.history:
        for key in ("train_loss", "val_loss", "val_auroc", "val_pair_acc"):
            value = rec.get(key)
            if value is not None and value == value:  # skip None/NaN
                out.setdefault(f"scorer/{name}/{key}", []).append({"value": float(value), "step": rec["epoch"]})
    out[f"scorer/{name}/best_epoch"] = [{"value": float(result.best_epoch), "step": 0}]
    out[f"scorer/{name}/seconds"] = [{"value": float(result.seconds), "step": 0}]
    return out


def train_scorers(
    ebm_groups: pd.DataFrame,
    energies_train: pd.DataFrame,
    hidden_train: dict[str, Any],
    problems_train: pd.DataFrame,
    base_lm: dict[str, Any],
    scorer: dict[str, Any],
) -> tuple[dict, dict, dict, Any, Any, dict]:
    """Fit TextEBM, LatentEBM and the hybrid combination on train groups only.

    Returns the EBMs as plain dicts (versioned catalog files), the fitted hybrid, the two torch
    modules again for MLflow's model registry of the run, and per-epoch training metrics.
    """
    sp = parse(ScorerParams, scorer, "scorer")
    tok = load_tokenizer(base_lm["path"])
    metrics: dict[str, list[dict]] = {}
    text = fit_text_ebm(
        ebm_groups, problems_train, tok, sp.text_ebm.model_dump(exclude={"train"}),
        _train_config(sp.text_ebm.train, sp.seed, sp.progress),
    )
    latent = fit_latent_ebm(
        ebm_groups, hidden_train, sp.latent_ebm.hidden_source,
        sp.latent_ebm.model_dump(exclude={"train", "hidden_source"}),
        _train_config(sp.latent_ebm.train, sp.seed, sp.progress),
    )
    metrics |= _history_metrics("text_ebm", text) | _history_metrics("latent_ebm", latent)
    scorers = LearnedScorers(text_ebm=text.model, latent_ebm=latent.model, hidden_source=sp.latent_ebm.hidden_source)
    # Both EBMs split groups with the same seed, so their validation groups coincide.
    scored, _ = add_learned_energies(ebm_groups, problems_train, hidden_train, tok, scorers)
    cols = sp.hybrid.columns or [*energy_columns(energies_train), *LEARNED]
    hybrid, fit_on = fit_hybrid(scored, cols, latent.val_groups, sp.hybrid.min_holdout_groups, HybridConfig(l2=sp.hybrid.l2))
    metrics |= {f"scorer/hybrid/weight/{c}": [{"value": w, "step": 0}] for c, w in hybrid.weights.items()}
    hybrid_record = {"hybrid": hybrid, "fit_on": fit_on, "weights": hybrid.weights}
    text_dict = ebm_to_dict(text.model)
    latent_dict = {**ebm_to_dict(latent.model), "hidden_source": sp.latent_ebm.hidden_source}
    return text_dict, latent_dict, hybrid_record, text.model, latent.model, metrics
