"""Benchmark: training the TextEBM and the LatentEBM on a finished run's mined groups.

Usage (after any v1_rerank run: it reads that run's mined groups, train-side problems, hidden
states and base model)::

    python benchmarks/bench_ebm_training.py [--seeds 3] [--epochs 10] [--profile]

Fits one member per seed of each EBM with the run's model sizes and learning rates
(``parameters_scorer.yml``, converted as the pipeline converts it) on every mined group (train +
dev: the final fit of cross-validated selection), with early stopping off so every side runs the
same number of epochs, and prints the
seconds per epoch (validation scoring included). To compare two versions of the code, run it under
each one's ``src`` on ``PYTHONPATH``, alternating, nothing else running. ``--profile`` then runs
one more TextEBM member under the torch profiler and prints its costliest operators.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
import yaml

from impetus.framework.config import ScorerParams
from impetus.framework.datasets import TorchRecordDataset
from impetus.learned.crossfit import concat_hidden
from impetus.learned.fitting import EBMSpec, fit_latent_ebm, fit_text_ebm
from impetus.learned.train import TrainConfig
from impetus.pipelines.utils import load_base_tokenizer

DATA = Path("data")


def _train_config(spec: EBMSpec, seed: int, epochs: int) -> TrainConfig:
    """The run's training settings for ``seed``, with ``epochs`` and no early stopping."""
    return replace(spec.train, epochs=epochs, patience=epochs + 1, seed=seed, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="members (training seeds) per EBM")
    ap.add_argument("--epochs", type=int, default=10, help="epochs per member (early stopping off)")
    ap.add_argument("--profile", action="store_true", help="profile one more TextEBM member (torch profiler)")
    args = ap.parse_args()
    scorer = ScorerParams(**yaml.safe_load(Path("conf/base/parameters_scorer.yml").read_text())["scorer"]).to_core()
    groups = pd.read_parquet(DATA / "05_model_input/ebm_groups.parquet")
    problems = pd.concat([pd.read_parquet(DATA / f"02_intermediate/problems_{s}.parquet") for s in ("train", "dev")],
                         ignore_index=True)
    hidden = concat_hidden([TorchRecordDataset(filepath=str(DATA / f"04_feature/hidden_{s}.pt"), numpy=True).load()
                            for s in ("train", "dev")])
    tokenizer = load_base_tokenizer(json.loads((DATA / "06_models/base_lm.json").read_text()))
    text, latent = scorer.text_ebm, scorer.latent_ebm
    print(f"{len(groups)} mined candidates; {args.seeds} seeds x {args.epochs} epochs; "
          f"torch threads {torch.get_num_threads()}")
    for name, fit in (
        ("TextEBM", lambda s: fit_text_ebm(groups, problems, tokenizer, text.model,
                                           _train_config(text, s, args.epochs))),
        ("LatentEBM", lambda s: fit_latent_ebm(groups, hidden, "both", latent.model,
                                               _train_config(latent, s, args.epochs))),
    ):
        per_epoch = []
        for seed in range(args.seeds):
            res = fit(seed)  # its seconds: the training loop's own (inputs and model built before)
            per_epoch.append(res.seconds / len(res.history))
        print(f"{name}: " + ", ".join(f"{s:.3f}" for s in per_epoch) + " s per epoch (one member per seed)")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fit_text_ebm(groups, problems, tokenizer, text.model, _train_config(text, 0, args.epochs))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


if __name__ == "__main__":
    main()
