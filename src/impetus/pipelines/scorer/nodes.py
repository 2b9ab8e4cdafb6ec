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
    energy_columns,
    fit_hybrid,
    fit_latent_ebm,
    fit_text_ebm,
    out_of_fold_energies,
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

    The hybrid's learned-energy inputs are cross-fitted (each train problem scored by EBMs fit
    without it), so the combination weighs them as they will behave on new problems.

    Returns the EBMs as plain dicts (versioned catalog files), the fitted hybrid, the two torch
    modules again for MLflow's model registry of the run, and per-epoch training metrics.
    """
    sp = parse(ScorerParams, scorer, "scorer")
    tok = load_tokenizer(base_lm["path"])
    metrics: dict[str, list[dict]] = {}

    def fit(groups: pd.DataFrame, progress: bool) -> tuple[TrainResult, TrainResult]:
        text = fit_text_ebm(
            groups, problems_train, tok, sp.text_ebm.model_dump(exclude={"train"}),
            _train_config(sp.text_ebm.train, sp.seed, progress),
        )
        latent = fit_latent_ebm(
            groups, hidden_train, sp.latent_ebm.hidden_source,
            sp.latent_ebm.model_dump(exclude={"train", "hidden_source"}),
            _train_config(sp.latent_ebm.train, sp.seed, progress),
        )
        return text, latent

    def fit_scorers(groups: pd.DataFrame) -> LearnedScorers:
        text, latent = fit(groups, progress=False)
        return LearnedScorers(text_ebm=text.model, latent_ebm=latent.model, hidden_source=sp.latent_ebm.hidden_source)

    text, latent = fit(ebm_groups, sp.progress)  # the models rerank_eval uses: all train groups
    metrics |= _history_metrics("text_ebm", text) | _history_metrics("latent_ebm", latent)
    oof = out_of_fold_energies(
        ebm_groups, problems_train, hidden_train, tok, fit_scorers, sp.hybrid.cross_fit_folds, sp.seed
    )
    cols = sp.hybrid.columns or [*energy_columns(energies_train), *LEARNED]
    hybrid = fit_hybrid(oof, cols, HybridConfig(l2=sp.hybrid.l2))
    metrics |= {f"scorer/hybrid/weight/{c}": [{"value": w, "step": 0}] for c, w in hybrid.weights.items()}
    fit_on = f"all train groups; learned energies {sp.hybrid.cross_fit_folds}-fold out-of-fold"
    hybrid_record = {"hybrid": hybrid, "fit_on": fit_on, "weights": hybrid.weights}
    text_dict = ebm_to_dict(text.model)
    latent_dict = {**ebm_to_dict(latent.model), "hidden_source": sp.latent_ebm.hidden_source}
    return text_dict, latent_dict, hybrid_record, text.model, latent.model, metrics
