"""Benchmark: the two dearest per-candidate energies, before and after issue 25's cost fixes.

Usage (after any v1_rerank run: it reads that run's eval candidates, problems and TextEBM)::

    python benchmarks/bench_scoring_cost.py [--repeats 3]

- TextEBM ensemble: every candidate encoded and scored (length-sorted here: ``score`` itself scores
  repeated token rows once since commit 0abcc87); each distinct (problem, completion) once in row order,
  64 a batch (the pipeline before length-sorted scoring); and what the pipeline runs now
  (:func:`impetus.learned.fitting.text_energy_scores`: distinct rows, length-sorted, 128 a batch).
- Embedding consistency: MiniLM in fp32, against bf16 autocast (``energies.embedding_dtype``) at 64
  and at 128 texts a batch (``energies.embedding_batch_size``).
- bf16: the TextEBM with its encoder layers in bf16 (``scorer.text_ebm.score_dtype``: what ``auto``
  runs on a CPU with a bf16 fast path, since 2026-12-07; the "distinct rows" side is fp32), and, not
  in the pipeline, MiniLM with its weights cast to bf16 (layer norms included) instead of autocast.

Interleaved repeats in one process; prints each side's seconds and how far the energies moved
(largest difference, Pearson r, share of problems whose lowest-energy candidate is the same row).
On a CPU without a bf16 fast path the bf16 side is expected to be much slower. Timings on shared
CPUs are noisy: run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import pandas as pd

from impetus.energy.consistency import _MODEL_CACHE, embed_texts, embedding_consistency, load_embedding_model
from impetus.learned.ensemble import energy_scores
from impetus.learned.fitting import distinct_keys, text_energy_scores, text_inputs
from impetus.learned.models import TokenInputs
from impetus.lm.precision import cpu_bf16_fast_path

from bench_text_ebm import load_eval_run  # the benchmarks folder is on sys.path


def _timed(fn):  # noqa: ANN001, ANN202 - any zero-argument callable
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _compare(name: str, a: np.ndarray, b: np.ndarray, pids: np.ndarray) -> str:
    rows = pd.DataFrame({"p": pids, "a": a, "b": b})
    same = (rows.groupby("p")["a"].idxmin() == rows.groupby("p")["b"].idxmin()).mean()
    return (f"{name}: max |difference| {np.abs(a - b).max():.2e}, r {np.corrcoef(a, b)[0, 1]:.6f}, "
            f"same argmin on {100 * same:.1f}% of problems")


class _RowOrder:
    """Token inputs scored in row order: ``score`` length-sorts only :class:`TokenInputs`."""

    def __init__(self, inputs: TokenInputs):
        self.inputs = inputs

    def __len__(self) -> int:
        return len(self.inputs)

    def __call__(self, idx: np.ndarray):  # noqa: ANN204 - TokenInputs' own return
        return self.inputs(idx)


def _every_row(ens, tok, df: pd.DataFrame, problems: pd.DataFrame) -> np.ndarray:  # noqa: ANN001
    """Every candidate scored, length-sorted, 64 a batch (the pipeline before commit 69f49b3)."""
    inputs = text_inputs(tok, df, problems, ens.config.max_len)
    order = np.argsort(inputs.mask.sum(dim=1).numpy(), kind="stable")
    sorted_rows = _RowOrder(TokenInputs(inputs.ids[order], inputs.mask[order]))
    energy = np.empty(len(df), dtype=np.float32)
    energy[order] = energy_scores(ens, sorted_rows, df["problem_id"].to_numpy()[order], batch_size=64)[0]
    return energy


def _distinct_in_row_order(ens, tok, df: pd.DataFrame, problems: pd.DataFrame) -> np.ndarray:  # noqa: ANN001
    first, codes = distinct_keys(df, ["problem_id", "completion"])
    unique = df.iloc[first]
    inputs = _RowOrder(text_inputs(tok, unique, problems, ens.config.max_len))
    return energy_scores(ens, inputs, unique["problem_id"].to_numpy(), batch_size=64)[0][codes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    version, ens, tok, df, problems = load_eval_run()
    pids = df["problem_id"].to_numpy()
    texts = df["completion"].tolist()
    minilm = load_embedding_model(None)  # loaded before the clock, as the pipeline does
    import torch

    bf16_minilm = "MiniLM with bf16 weights"  # a cache key of its own, so embed_texts finds the copy
    _MODEL_CACHE[(bf16_minilm, "cpu")] = copy.deepcopy(minilm).to(torch.bfloat16)
    sides = {
        "TextEBM, every candidate": lambda: _every_row(ens, tok, df, problems),
        "TextEBM, distinct, row order": lambda: _distinct_in_row_order(ens, tok, df, problems),
        "TextEBM, distinct rows": lambda: text_energy_scores(ens, tok, df, problems)[0],  # fp32
        "MiniLM fp32": lambda: embedding_consistency(embed_texts(texts), pids),
        "MiniLM bf16 autocast": lambda: embedding_consistency(embed_texts(texts, dtype="bfloat16"), pids),
        "MiniLM bf16, batch 128": lambda: embedding_consistency(embed_texts(texts, batch_size=128, dtype="bfloat16"),
                                                                pids),
        "TextEBM, bf16 encoder": lambda: text_energy_scores(ens, tok, df, problems, dtype="bfloat16")[0],
        "MiniLM bf16 weights, 128": lambda: embedding_consistency(embed_texts(texts, bf16_minilm, batch_size=128), pids),
    }
    seconds: dict[str, list[float]] = {k: [] for k in sides}
    out = {}
    for _ in range(args.repeats):
        for name, fn in sides.items():
            out[name], s = _timed(fn)
            seconds[name].append(s)
    key = df["problem_id"].astype(str) + "\x1f" + df["completion"].astype(str)
    print(f"{len(df)} candidates of {df['problem_id'].nunique()} problems, {key.nunique()} distinct; "
          f"{len(ens)} TextEBM members ({version}); bf16 fast path: {cpu_bf16_fast_path()[1]}")
    for name, s in seconds.items():
        print(f"{name:>29}: " + ", ".join(f"{x:.3f}" for x in s) + " s")
    print(_compare("TextEBM", out["TextEBM, every candidate"], out["TextEBM, distinct rows"], pids))
    print(_compare("TextEBM, length-sorted against row order", out["TextEBM, distinct, row order"],
                   out["TextEBM, distinct rows"], pids))
    print(_compare("embedding consistency", out["MiniLM fp32"], out["MiniLM bf16 autocast"], pids))
    print(_compare("embedding consistency, batch 128 against 64", out["MiniLM bf16 autocast"],
                   out["MiniLM bf16, batch 128"], pids))
    print(_compare("TextEBM, bf16 encoder against fp32", out["TextEBM, distinct rows"], out["TextEBM, bf16 encoder"],
                   pids))
    print(_compare("embedding consistency, bf16 weights against fp32", out["MiniLM fp32"],
                   out["MiniLM bf16 weights, 128"], pids))


if __name__ == "__main__":
    main()
