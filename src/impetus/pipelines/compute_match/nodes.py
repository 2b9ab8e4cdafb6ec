"""Thin node over :mod:`impetus.selection.compute_match`."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from impetus.framework.config import ComputeMatchParams
from impetus.framework.tracking import as_mlflow_metrics
from impetus.learned.fitting import LearnedScorers, dev_held_out, score_split
from impetus.pipelines.utils import load_base_tokenizer
from impetus.selection.budget import v1_reference
from impetus.selection.compute_match import compute_matched, ebd_options, v1_options, v2_options
from impetus.selection.compute_report import markdown, plot

logger = logging.getLogger(__name__)


def choose_family(
    problems_eval: pd.DataFrame, graded_eval: pd.DataFrame, energies_eval: pd.DataFrame, hidden_eval: dict[str, Any],
    problems_dev: pd.DataFrame, graded_dev: pd.DataFrame, energies_dev: pd.DataFrame, hidden_dev: dict[str, Any],
    rerank_metrics: dict, base_lm: dict[str, Any], text_ebm: dict, latent_ebm: dict, hybrid_energy: dict,
    ebd_steps: pd.DataFrame, v2_answers: pd.DataFrame, v2_dev_answers: pd.DataFrame,
    compute_match: ComputeMatchParams,
) -> tuple[dict, str, dict, dict]:
    """V1 at each n (the listed methods), EBD per MH step and V2 on the shared problems; per budget the
    option chosen on dev, measured on eval against the V1 headline at the same budget."""
    tok = load_base_tokenizer(base_lm)
    scorers = LearnedScorers.from_records(text_ebm, latent_ebm, hybrid_energy)
    eval_table = score_split(graded_eval, energies_eval, hidden_eval, problems_eval, tok, scorers)[0]
    dev_table = score_split(graded_dev, energies_dev, hidden_dev, problems_dev, tok, scorers,
                            held_out=dev_held_out(scorers, "compute_match"))[0]
    v1 = v1_reference(eval_table, rerank_metrics, vote_for=compute_match.vote_for)
    options = (v1_options(eval_table, dev_table, v1.methods, v1.resolve(compute_match.v1_methods))
               + ebd_options(ebd_steps) + v2_options(v2_answers, v2_dev_answers))
    result = compute_matched(options, compute_match.budgets, v1.headline, compute_match.n_boot, compute_match.seed,
                             compute_match.rule)
    report = markdown(result)
    logger.info("Compute-matched choice:\n%s", report)
    flat = {f"compute_match/{r['budget_x']:g}x/{k}": v for r in result["budgets"]
            for k, v in (("chosen_eval_accuracy", (r["chosen"] or {}).get("eval_accuracy")),
                         ("vs_headline", (r.get("vs_headline") or {}).get("mean_diff"))) if v is not None}
    return result, report, {"compute_match_accuracy_vs_tokens.png": plot(result)}, as_mlflow_metrics(flat)
