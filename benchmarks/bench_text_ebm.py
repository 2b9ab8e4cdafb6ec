"""Benchmark: the TextEBM ensemble's eval scoring, by the encoder's eval path and dtype.

Usage (after any v1_rerank run: it reads that run's eval candidates, problems and TextEBM)::

    python benchmarks/bench_text_ebm.py [--repeats 3]

Every side scores the same candidates with the same ensemble as the pipeline does
(:func:`impetus.learned.fitting.text_energy_scores`: distinct rows, length-sorted), interleaved
repeats: the plain ``nn.TransformerEncoder`` pass (what training ran until 2026-12-08); the last layer for [CLS]
only with the other layers as ``nn`` modules (the eval path until the SDPA change); the eval path
now (attention through ``scaled_dot_product_attention``), in fp32 and with a bf16 encoder
(``scorer.text_ebm.score_dtype``). Prints each side's seconds, the largest energy difference from
the full pass and the share of problems whose argmin is the same. On a CPU without a bf16 fast path
the bf16 side is expected to be much slower. Timings on shared CPUs are noisy: run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import impetus.learned.models as models
from impetus.learned.fitting import text_energy_scores
from impetus.learned.persist import load_ebm
from impetus.lm.precision import cpu_bf16_fast_path
from impetus.pipelines.utils import load_base_tokenizer

DATA = Path("data")


def _full(self: models.TextEBM, x, pad):  # noqa: ANN001 - the method it replaces
    return self.encoder(x, src_key_padding_mask=pad)


def _cls_layers(self: models.TextEBM, x, pad):  # noqa: ANN001 - the method it replaces
    """The eval path before the SDPA change (2026-12-07): the first layers as ``nn.TransformerEncoderLayer`` modules
    (their own eval path: an explicit masked softmax), the last for [CLS] through ``nn.MultiheadAttention``."""
    *first, last = self.encoder.layers
    for layer in first:
        x = layer(x, src_key_padding_mask=pad)
    h = last.norm1(x)
    cls = x[:, :1] + last.self_attn(h[:, :1], h, h, key_padding_mask=pad, need_weights=False)[0]
    return cls + last.linear2(last.activation(last.linear1(last.norm2(cls))))


def load_eval_run() -> tuple[str, Any, Any, pd.DataFrame, pd.DataFrame]:
    """The last v1_rerank run's TextEBM (its version folder's name and the ensemble), the base
    tokenizer, and the eval candidates and problems (also used by ``bench_scoring_cost.py``)."""
    version = sorted((DATA / "06_models/text_ebm.pt").iterdir())[-1]
    ens = load_ebm(version / "text_ebm.pt")
    tok = load_base_tokenizer(json.loads((DATA / "06_models/base_lm.json").read_text()))
    df = pd.read_parquet(DATA / "03_primary/graded_eval.parquet")
    return version.name, ens, tok, df, pd.read_parquet(DATA / "02_intermediate/problems_eval.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    version, ens, tok, df, problems = load_eval_run()
    pids = df["problem_id"].to_numpy()
    sides = {"full": (_full, "float32"), "cls, layer modules": (_cls_layers, "float32"),
             "cls, sdpa": (models.TextEBM._encode_for_cls, "float32"),
             "cls, sdpa, bf16 encoder": (models.TextEBM._encode_for_cls, "bfloat16")}
    seconds: dict[str, list[float]] = {k: [] for k in sides}
    energies = {}
    for _ in range(args.repeats):
        for name, (encode, dtype) in sides.items():
            models.TextEBM._encode_for_cls = encode
            t0 = time.perf_counter()
            energies[name], _ = text_energy_scores(ens, tok, df, problems, dtype=dtype)
            seconds[name].append(time.perf_counter() - t0)
    argmin = {k: pd.Series(e).groupby(pids).idxmin() for k, e in energies.items()}
    print(f"{len(df)} candidates, {len(ens)} members ({version}); bf16 fast path: {cpu_bf16_fast_path()[1]}")
    for name, s in seconds.items():
        print(f"{name:>24}: " + ", ".join(f"{x:.3f}" for x in s) + " s; against full: max |energy difference| "
              f"{np.abs(energies['full'] - energies[name]).max():.2e}, same argmin on "
              f"{100 * (argmin['full'] == argmin[name]).mean():.1f}% of problems")


if __name__ == "__main__":
    main()
