"""latent_eval: optimise eval answers' latent prefixes under an energy and compare with V1."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
import torch

from impetus.benchmarks.grading import text_grader
from impetus.config import BenchmarkParams, LatentParams, SamplingStageParams
from impetus.energy.registry import energy_columns
from impetus.latent.evaluate import optimize_problems, summarize
from impetus.latent.optimize import LatentConfig, LatentOptimizer
from impetus.latent.report import markdown, plots
from impetus.latent.scoring import NewAnswerScorer
from impetus.learned.fitting import LearnedScorers, score_split
from impetus.lm.sampler import get_sampler
from impetus.pipelines.sampling.nodes import sampling_params
from impetus.pipelines.utils import load_base_lm
from impetus.selection.report import build_methods
from impetus.tracking import as_mlflow_metrics, method_metrics

logger = logging.getLogger(__name__)


def _pool_fn(source: str):
    """Pooled LatentEBM input from answer states (z in place of the first ones), as in V1; the
    answer state is the last token's (the V1 fallback), since V2 may move the answer."""
    def pool(states: torch.Tensor) -> torch.Tensor:
        mean, last = states.mean(dim=0), states[-1]
        return {"mean": mean, "answer": last, "both": torch.cat([mean, last])}[source]
    return pool


def latent_eval(
    problems_eval: pd.DataFrame, prompts_eval: pd.DataFrame, graded_eval: pd.DataFrame, energies_eval: pd.DataFrame,
    hidden_eval: dict[str, Any], rerank_selections: pd.DataFrame, rerank_metrics: dict, base_lm: dict[str, Any],
    text_ebm: dict, latent_ebm: dict, hybrid_energy: dict, benchmark: BenchmarkParams, sampling: SamplingStageParams,
    v2_latent: LatentParams,
) -> tuple[dict, str, pd.DataFrame, dict, dict]:
    """V2 answers for the first ``n_problems`` eval problems, from each start and mode; metrics
    against the V1 methods matched at V2's token budget."""
    p = v2_latent
    scorers = LearnedScorers.from_records(text_ebm, latent_ebm, hybrid_energy)
    model, tok = load_base_lm(base_lm)
    bench = benchmark.build()
    grade = text_grader(bench, problems_eval)

    scorer = NewAnswerScorer(model, tok, bench, problems_eval, prompts_eval, graded_eval, scorers, None)

    def energy_of(pid: str, gens: list) -> Any:
        return scorer(pid, gens)[p.energy].to_numpy(dtype=float)

    sampler = get_sampler(sampling.backend, model, tok, record=False)
    sp = sampling_params(sampling, benchmark)
    optimizers = {}
    for mode in p.modes:
        cfg = LatentConfig(mode=mode, prefix_fraction=p.prefix_fraction, min_prefix=p.min_prefix, steps=p.steps,
                           lr=p.lr, samples=p.samples, radius=p.radius, stop_energy=p.stop_energy)
        extra = {} if mode == "reinforce" else {"state_energy": scorers.latent_ebm, "pool": _pool_fn(scorers.hidden_source)}
        optimizers[mode] = (LatentOptimizer(sampler, tok, sp, cfg), extra)
    headline = rerank_metrics["headline"]["method"]
    sel = rerank_selections.set_index("problem_id")
    pids = list(problems_eval["problem_id"])[: p.n_problems or None]
    starts = {s: sel.loc[pids, "first" if s == "single" else headline] for s in p.starts}
    progress = iter
    if p.progress:
        from tqdm.auto import tqdm

        progress = lambda xs: tqdm(xs, desc="V2 latent optimisation", unit="problem")  # noqa: E731
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(p.seed)
        v2 = optimize_problems(optimizers, starts, graded_eval, prompts_eval, tok, energy_of, grade, p.seed, progress)
    v1_df, _ = score_split(graded_eval, energies_eval, hidden_eval, problems_eval, tok, scorers)
    v1_methods = build_methods(energy_columns(v1_df.columns), rerank_metrics.get("taus", {}))
    compare_to = [headline if m == "headline" else m for m in p.compare_to]
    result = summarize(v2, v1_df, v1_methods, list(dict.fromkeys(compare_to)), p.n_boot, p.seed)
    result |= {"energy": p.energy, "headline_v1": headline, "scoring_lm_tokens": scorer.lm_tokens}
    report = markdown(result, v2)
    logger.info("V2 report:\n%s", report)
    figures = plots(result, v2, lambda pid, text: grade(pid, text)[1])
    flat = method_metrics({k: {kk: vv for kk, vv in m.items() if kk != "family"} for k, m in result["methods"].items()},
                          prefix="v2/")
    answers = v2.drop(columns=["trace"]).assign(steps=[len(t) - 1 for t in v2["trace"]])
    return result, report, answers, figures, as_mlflow_metrics(flat)
