"""scorer: train the learned energies (TextEBM, LatentEBM, hybrid) on the mined train-side groups."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from impetus.framework.config import RerankParams, ScorerParams
from impetus.learned.crossfit import concat_hidden, final_fit_splits
from impetus.learned.ensemble_fit import fit_learned_energies
from impetus.learned.fitting import text_dtype_choice
from impetus.pipelines.utils import load_base_tokenizer
from impetus.framework.tracking import as_mlflow_metrics, series_metrics

logger = logging.getLogger(__name__)

_CURVES = ("train_loss", "val_loss", "val_auroc", "val_pair_acc")


def train_scorers(
    ebm_groups: pd.DataFrame, problems_train: pd.DataFrame, hidden_train: dict[str, Any],
    problems_dev: pd.DataFrame, hidden_dev: dict[str, Any], base_lm: dict[str, Any], scorer: ScorerParams,
    rerank_eval: RerankParams,
) -> tuple[dict, dict, dict, dict, dict, dict]:
    """Fit the learned energies on the mined train-side groups (train + dev under cross-validated
    selection, train alone under ``selection: dev``; never eval); return their plain records (catalog), the two
    EBMs for MLflow's model registry (``{"model": module, "metrics": best epoch's metrics,
    "allow_pickle": scorer.allow_pickle}``) and
    the run's training metrics (the first member's per-epoch curves, every member's best epoch, the
    members' summed training seconds). Each EBM is an ensemble (:mod:`impetus.learned.ensemble_fit`)."""
    splits = final_fit_splits(rerank_eval.selection, (problems_train, hidden_train), (problems_dev, hidden_dev))
    problems = pd.concat([p for p, _ in splits], ignore_index=True)
    hidden = concat_hidden([h for _, h in splits])  # same order as the mining stage, so hidden_row agrees
    dtype, why = text_dtype_choice(scorer.text_ebm.score_dtype)
    logger.info("TextEBM scores candidates with its encoder layers in %s (%s)", dtype, why)
    fit = fit_learned_energies(ebm_groups, problems, hidden, load_base_tokenizer(base_lm), scorer.to_core())
    records = fit.scorers.to_records()
    metrics: dict[str, Any] = {}
    logged: dict[str, dict] = {}
    members = fit.members
    for name, results in (("text_ebm", members.text), ("latent_ebm", members.latent)):
        # Curves of the first seed's member (fit on all train groups); every member's best epoch.
        if results[0] is None:  # no hidden states: no LatentEBM
            continue
        first = results[0]
        metrics |= series_metrics(f"scorer/{name}", first.history, _CURVES, "epoch")
        best = first.history[first.best_epoch] if first.best_epoch >= 0 else {}
        metrics |= as_mlflow_metrics({f"scorer/{name}/best_{k}": best.get(k) for k in _CURVES})
        logged[name] = {"model": getattr(fit.scorers, name), "allow_pickle": scorer.allow_pickle,
                        "metrics": {k: best[k] for k in _CURVES if isinstance(best.get(k), float) and best[k] == best[k]}
                        | {"best_epoch": float(first.best_epoch), "members": float(len(results))}}
        metrics |= as_mlflow_metrics({f"scorer/{name}/members": len(results),
                                      f"scorer/{name}/seconds": sum(r.seconds for r in results)}
                                     | {f"scorer/{name}/best_epoch/{m}": r.best_epoch
                                        for m, r in zip(members.names, results)})
    metrics |= as_mlflow_metrics({f"scorer/hybrid/weight/{c}": w for c, w in fit.scorers.hybrid.weights.items()})
    metrics |= as_mlflow_metrics({f"scorer/hybrid/cv_loss/l2_{l2:g}": v for l2, v in fit.hybrid_cv_loss.items()})
    metrics |= as_mlflow_metrics({"scorer/hybrid/l2": fit.scorers.hybrid.config.l2,
                                  "scorer/text_ebm/score_bf16": float(dtype == "bfloat16")})
    return records["text_ebm"], records["latent_ebm"], records["hybrid"], logged["text_ebm"], logged["latent_ebm"], metrics
