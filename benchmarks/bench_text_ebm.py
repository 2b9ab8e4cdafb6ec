"""Benchmark: the TextEBM ensemble's eval scoring, full encoder vs last layer for [CLS] only.

Usage (after any v1_rerank run: it reads that run's eval candidates, problems and TextEBM)::

    python benchmarks/bench_text_ebm.py [--repeats 3]

Both sides tokenize and score the same candidates with the same ensemble, interleaved repeats;
prints each side's seconds, the largest energy difference and the share of problems whose argmin
is the same. The full side swaps ``TextEBM._encode_for_cls`` for the plain ``nn.TransformerEncoder``
pass (what training runs). Timings on shared CPUs are noisy: run nothing else meanwhile.
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
from impetus.learned.ensemble import energy_scores
from impetus.learned.fitting import text_inputs
from impetus.learned.persist import load_ebm
from impetus.pipelines.utils import load_base_tokenizer

DATA = Path("data")


def _full(self: models.TextEBM, x, pad):  # noqa: ANN001 - the method it replaces
    return self.encoder(x, src_key_padding_mask=pad)


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
    sides = {"full": _full, "cls": models.TextEBM._encode_for_cls}
    seconds: dict[str, list[float]] = {k: [] for k in sides}
    energies = {}
    for _ in range(args.repeats):
        for name, encode in sides.items():
            models.TextEBM._encode_for_cls = encode
            t0 = time.perf_counter()
            energies[name], _ = energy_scores(ens, text_inputs(tok, df, problems, ens.config.max_len), pids, batch_size=64)
            seconds[name].append(time.perf_counter() - t0)
    argmin = {k: pd.Series(e).groupby(pids).idxmin() for k, e in energies.items()}
    print(f"{len(df)} candidates, {len(ens)} members ({version})")
    for name, s in seconds.items():
        print(f"{name:>4}: " + ", ".join(f"{x:.2f}" for x in s) + " s")
    print(f"max |energy difference| {np.abs(energies['full'] - energies['cls']).max():.2e}; "
          f"same argmin on {100 * (argmin['full'] == argmin['cls']).mean():.1f}% of problems")


if __name__ == "__main__":
    main()
