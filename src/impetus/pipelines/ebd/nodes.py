"""ebd_eval: block-wise MH chains per eval problem under an energy; compared at equal tokens."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import pandas as pd

from impetus.benchmarks.grading import text_grader
from impetus.config import BenchmarkParams, EBDParams, SamplingStageParams
from impetus.decoding.evaluate import chain_answers, run_problems, summarize
from impetus.decoding.report import markdown, plot_tokens
from impetus.energy.registry import energy_columns
from impetus.latent.scoring import NewAnswerScorer
from impetus.learned.fitting import LearnedScorers, score_split
from impetus.lm.sampler import get_sampler
from impetus.pipelines.sampling.nodes import sampling_params
from impetus.pipelines.utils import load_base_lm
from impetus.selection.report import build_methods
from impetus.tracking import as_mlflow_metrics, method_metrics

logger = logging.getLogger(__name__)


def ebd_eval(
    problems_eval: pd.DataFrame, prompts_eval: pd.DataFrame, graded_eval: pd.DataFrame, energies_eval: pd.DataFrame,
    hidden_eval: dict[str, Any], rerank_metrics: dict, base_lm: dict[str, Any], text_ebm: dict, latent_ebm: dict,
    hybrid_energy: dict, benchmark: BenchmarkParams, sampling: SamplingStageParams, ebd: EBDParams,
) -> tuple[dict, str, pd.DataFrame, dict, dict]:
    """EBD answers for the first ``ebd.n_problems`` eval problems and the comparison with V1."""
    scorers = LearnedScorers.from_records(text_ebm, latent_ebm, hybrid_energy)
    model, tok = load_base_lm(base_lm)
    bench = benchmark.build()
    grade = text_grader(bench, problems_eval)

    def decode(ids: list[int]) -> str:
        return tok.decode(ids, skip_special_tokens=False)

    scorer = NewAnswerScorer(model, tok, bench, problems_eval, prompts_eval, graded_eval, scorers, None)
    sampler = get_sampler(sampling.backend, model, tok, record=True)
    # The proposal must be the model's own conditional: temperature 1, no nucleus truncation.
    params = dataclasses.replace(sampling_params(sampling, benchmark), n=1, temperature=1.0, top_p=1.0)
    prompt_of = dict(zip(prompts_eval["problem_id"], prompts_eval["prompt"]))
    pids = list(problems_eval["problem_id"])[: ebd.n_problems or None]
    t0 = time.perf_counter()
    cands = {pid: g.sort_values("sample_idx").head(ebd.chains) for pid, g in graded_eval.groupby("problem_id")}
    chains_of, reuse_cache = run_problems(
        sampler, tok, params, [tok(prompt_of[pid])["input_ids"] for pid in pids],
        [[tok(t, add_special_tokens=False)["input_ids"] for t in cands[pid]["completion"]] for pid in pids],
        lambda k, traces: scorer.from_traces(pids[k], traces)[ebd.energy].to_numpy(float), ebd)
    seconds = (time.perf_counter() - t0) / max(len(pids), 1)
    out, curve = [], []
    for k, pid in enumerate(pids):
        chains = chains_of[k]
        base_tokens = int(cands[pid]["n_tokens"].sum())
        for name, (answer, ok, text) in chain_answers(chains, decode, pid, grade).items():
            out.append({"problem_id": pid, "method": name, "answer": answer, "correct": ok, "text": text,
                        "tokens": base_tokens + chains.proposed_tokens, "seconds": seconds,
                        "acceptance_rate": chains.acceptance_rate()})
        per_step = chains.proposed_tokens / max(ebd.steps, 1)
        for s in range(ebd.steps + 1):
            for name, (_, ok, _) in chain_answers(chains, decode, pid, grade, step=s).items():
                curve.append({"problem_id": pid, "method": name, "step": s, "correct": ok,
                              "tokens": base_tokens + per_step * s})
    answers = pd.DataFrame(out)
    curve_df = (pd.DataFrame(curve).groupby(["method", "step"], as_index=False)
                .agg(accuracy=("correct", "mean"), tokens_per_problem=("tokens", "mean")))
    v1_df, _ = score_split(graded_eval, energies_eval, hidden_eval, problems_eval, tok, scorers)
    taus = rerank_metrics.get("taus", {})
    v1_methods = build_methods(energy_columns(v1_df.columns), {**taus, ebd.energy: taus.get(ebd.energy, 1.0)})
    headline = rerank_metrics["headline"]["method"]
    compare_to = list(dict.fromkeys([ebd.energy, "majority", f"vote_{ebd.energy}", headline]))
    result = summarize(answers, curve_df, v1_df, v1_methods, compare_to, ebd.n_boot, ebd.seed)
    result |= {"energy": ebd.energy, "tau": ebd.tau, "block": ebd.block, "steps": ebd.steps, "chains": ebd.chains,
               "headline_v1": headline, "reuse_cache": reuse_cache}
    report = markdown(result)
    logger.info("EBD report:\n%s", report)
    flat = method_metrics({k: {kk: vv for kk, vv in m.items() if kk != "family"} for k, m in result["methods"].items()},
                          prefix="ebd/")
    return result, report, answers, {"ebd_accuracy_vs_tokens.png": plot_tokens(result)}, as_mlflow_metrics(flat)
