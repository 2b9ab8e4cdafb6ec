"""Fidelity of bf16-recorded energies: the same completions, scored by an fp32 teacher-forced pass.

Usage::

    python benchmarks/bench_dtype_fidelity.py [--problems 40 --n 8 --dtype bfloat16]

Samples ``--n`` completions of ``--problems`` few-shot 2-digit additions with SmolLM2-135M in
``--dtype`` (mixed precision: decoder blocks half, final norm / LM head / statistics fp32, see
``impetus.lm.precision``), recording the energies while decoding, then teacher-forces the same
completions with the fp32 model. Per energy column (``impetus.energy.logit.ENERGY_COLUMNS``) and for
the pooled last-layer state the LatentEBM reads, it prints: the Pearson correlation over all
candidates, the mean within-problem Spearman correlation (the ranking a reranker uses), and the
share of problems whose lowest-energy completion is the same text. Prints the CPU it ran on.
``--all-half`` is the control: the whole model in ``--dtype``, LM head and final norm included.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import pearsonr, spearmanr  # noqa: E402

from impetus.energy.logit import ENERGY_COLUMNS, candidate_energy_row, per_token_from_record  # noqa: E402
from impetus.energy.recorded import token_span  # noqa: E402
from impetus.lm.loading import load_model, resolve_model  # noqa: E402
from impetus.lm.sampler import SamplingParams, get_sampler  # noqa: E402
from impetus.lm.scoring import score_candidates  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bench_sampling import STOP, cpu_name, make_prompts  # noqa: E402


def answer_span(text: str) -> tuple[int, int] | None:
    """The last number's character span (the answer of "... The answer is 68.")."""
    found = list(re.finditer(r"-?\d+", text))
    return (found[-1].start(), found[-1].end()) if found else None


def recorded_row(g) -> dict:
    rec = g.record
    per_tok = per_token_from_record(torch.tensor(rec["lse"]), torch.tensor(rec["tok_logit"]), torch.tensor(rec["deepconf"]))
    return candidate_energy_row(per_tok, token_span(list(rec["char_ends"]), answer_span(g.text)), g.n_tokens)


def within_problem(a: np.ndarray, b: np.ndarray, groups: np.ndarray, texts: np.ndarray) -> tuple[float, float]:
    """Mean Spearman correlation within each problem (problems whose values are not all tied), and
    the share of problems where the lowest energy picks the same completion text (duplicates of one
    text are one pick, whichever copy is lowest)."""
    rhos, same = [], []
    for g in np.unique(groups):
        x, y, t = a[groups == g], b[groups == g], texts[groups == g]
        same.append(t[int(np.argmin(x))] == t[int(np.argmin(y))])
        if np.ptp(x) > 0 and np.ptp(y) > 0:
            rhos.append(spearmanr(x, y).statistic)
    return float(np.mean(rhos)) if rhos else float("nan"), float(np.mean(same))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=40)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                    help="float32 is the control: recorded against teacher-forced in the same dtype")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--all-half", action="store_true",
                    help="the control: the whole model in --dtype (head and final norm too), not the mixed model")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = resolve_model(args.model)
    if args.all_half:
        half, tok = load_model(path, dtype="float32")
        half.to(getattr(torch, args.dtype))
    else:
        half, tok = load_model(path, dtype=args.dtype)
    prompts = make_prompts(args.problems)
    params = SamplingParams(n=args.n, temperature=0.8, top_p=0.95, max_new_tokens=args.max_new_tokens, stop=STOP,
                            batch_size=64, seed=0)
    gens = get_sampler("hf", half, tok, record=True).generate(prompts, params, seeds=list(range(len(prompts))))
    del half
    flat = [(i, g) for i, row in enumerate(gens) for g in row]
    # Teacher forcing re-tokenises the text: compare only rows whose text round-trips to the same ids.
    flat = [(i, g) for i, g in flat if tok(g.text, add_special_tokens=False)["input_ids"] == g.token_ids]
    fp32, _ = load_model(path, dtype="float32")
    ref = score_candidates(fp32, tok, [prompts[i] for i, _ in flat], [g.text for _, g in flat],
                           [answer_span(g.text) for _, g in flat], batch_size=16, hidden=True)
    groups, texts = np.array([i for i, _ in flat]), np.array([g.text for _, g in flat], dtype=object)
    got = {c: np.array([recorded_row(g)[c] for _, g in flat], float) for c in ENERGY_COLUMNS}
    print(f"model={args.model} dtype={args.dtype}{' (whole model)' if args.all_half else ' (mixed)' if args.dtype != 'float32' else ''} problems={args.problems} n={args.n} "
          f"candidates compared={len(flat)} cpu={cpu_name()}")
    print("| energy | Pearson r | within-problem Spearman | same pick |\n|---|---:|---:|---:|")
    for col in ENERGY_COLUMNS:
        ref_col = ref.energies[col].to_numpy(float)
        rho, same = within_problem(got[col], ref_col, groups, texts)
        print(f"| {col} | {pearsonr(got[col], ref_col).statistic:.4f} | {rho:.4f} | {same:.3f} |")
    states = np.stack([g.record["hidden_mean"] for _, g in flat])
    cos = (states * ref.hidden_mean).sum(1) / np.linalg.norm(states, axis=1) / np.linalg.norm(ref.hidden_mean, axis=1)
    print(f"| hidden_mean (state) | per-element r {pearsonr(states.ravel(), ref.hidden_mean.ravel()).statistic:.4f} "
          f"| cosine min {cos.min():.4f} | mean {cos.mean():.4f} |")


if __name__ == "__main__":
    main()
