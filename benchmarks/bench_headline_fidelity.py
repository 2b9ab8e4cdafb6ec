"""Fidelity of the headline's energies in bf16, on a run's own eval candidates (issue 26).

Usage (after ``make run``, whose ``model.dtype: auto`` sampled and recorded in bf16 on a CPU with AMX)::

    .venv/bin/python benchmarks/bench_headline_fidelity.py

``benchmarks/bench_dtype_fidelity.py`` compares the logit energies of fresh benchmark completions; this
script compares what the report ranks by. It teacher-forces the run's eval candidates
(``graded_eval``) with the base model in fp32, exactly as the energies stage does with
``energies.logit_source: teacher_forced``. The text-only energies (embedding consistency, answer
agreement) are copied over: they do not depend on the LM's dtype. Both tables are then scored with
the run's trained learned energies (``text_ebm``, ``latent_ebm``, ``hybrid_energy``), as rerank_eval
scores eval.

For every energy column it prints:
- Pearson r over all candidates;
- the mean within-problem Spearman ρ;
- the share of problems whose lowest-energy candidate is the same one;
- eval accuracy of the lowest-energy candidate with each table, and their paired difference with a
  bootstrap CI.

The shortlist's energies (``rerank_eval.shortlist``) are marked. Prints the CPU it ran on.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import pearsonr  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bench_dtype_fidelity import within_problem  # noqa: E402
from bench_sampling import cpu_name  # noqa: E402

KEYS = ["problem_id", "sample_idx"]


def _catalog():
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(Path.cwd())
    session = KedroSession.create()
    ctx = session.load_context()
    return ctx.catalog, ctx.params


def _pick_correct(df: pd.DataFrame, col: str) -> pd.Series:
    """Per problem: whether its lowest-``col`` candidate is right (the report's argmin rule)."""
    from impetus.selection.rules import select_argmin, selection_correct

    return selection_correct(df, select_argmin(df, col)).astype(float)


def main() -> None:
    from impetus.learned.fitting import LearnedScorers, score_split
    from impetus.lm.scoring import score_table
    from impetus.pipelines.utils import load_base_lm, load_base_tokenizer
    from impetus.selection.metrics import paired_bootstrap

    catalog, params = _catalog()
    graded, prompts, problems = (catalog.load(f"{k}_eval") for k in ("graded", "prompts", "problems"))
    energies, hidden, base_lm = catalog.load("energies_eval"), catalog.load("hidden_eval"), catalog.load("base_lm")
    print(f"CPU: {cpu_name()}; candidates recorded in {base_lm['dtype']} ({base_lm.get('dtype_reason', '')})")
    scorers = LearnedScorers.from_records(catalog.load("text_ebm"), catalog.load("latent_ebm"),
                                          catalog.load("hybrid_energy"))
    t0 = time.perf_counter()
    model, tok = load_base_lm({**base_lm, "dtype": "float32"})
    forced, hidden_fp, _ = score_table(model, tok, graded, prompts, batch_size=params["energies"].batch_size,
                                       hidden=True, progress=True)
    text_only = [c for c in energies.columns if c not in forced.columns]
    forced = forced.merge(energies[KEYS + text_only], on=KEYS, validate="one_to_one")
    print(f"fp32 teacher-forced pass over {len(graded)} candidates: {time.perf_counter() - t0:.1f} s; "
          f"copied (text only): {text_only}")
    tok = load_base_tokenizer(base_lm)
    rec, _ = score_split(graded, energies, hidden, problems, tok, scorers)
    tf, _ = score_split(graded, forced, hidden_fp, problems, tok, scorers)
    rec, tf = (d.sort_values(KEYS).reset_index(drop=True) for d in (rec, tf))
    shortlist = set(params["rerank_eval"].shortlist or [])
    shortlist = {m.removeprefix("vote_") for m in shortlist}
    cols = [c for c in rec.columns if c in tf.columns and c not in graded.columns and c not in ("hidden_row",)
            and pd.api.types.is_float_dtype(rec[c])]
    print("\n| energy | in the shortlist | r | within-problem ρ | same pick | acc % recorded bf16 | acc % fp32 "
          "teacher-forced | difference [95% CI] |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    groups, texts = rec["problem_id"].to_numpy(), rec["completion"].astype(str).to_numpy()
    for c in cols:
        a, b = rec[c].to_numpy(float), tf[c].to_numpy(float)
        ok = ~(np.isnan(a) | np.isnan(b))
        if ok.sum() < 3 or np.std(a[ok]) == 0:
            continue
        r = pearsonr(a[ok], b[ok])[0]
        rho, same = within_problem(np.nan_to_num(a, nan=1e9), np.nan_to_num(b, nan=1e9), groups, texts)
        acc_a, acc_b = _pick_correct(rec, c), _pick_correct(tf, c)
        diff = paired_bootstrap(acc_a.to_numpy(), acc_b.reindex(acc_a.index).to_numpy())
        d, lo, hi = diff["mean_diff"], diff["lo"], diff["hi"]
        mark = "yes" if c in shortlist else ""
        print(f"| {c} | {mark} | {r:.4f} | {rho:.3f} | {same:.3f} | {100 * acc_a.mean():.1f} | "
              f"{100 * acc_b.mean():.1f} | {100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] |")


if __name__ == "__main__":
    main()
