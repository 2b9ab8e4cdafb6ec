"""Deterministic, disjoint train/dev/eval splits of a benchmark table (the ``ingest`` stage's core)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

# Source splits that may feed the train (EBM mining) pool when the source has its own train split.
_TRAIN_SPLITS = ("train", "validation")


def split_problems(
    df: pd.DataFrame, n_train: int | None, n_dev: int, n_eval: int | None, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Return ``(train, dev, eval)`` problems, pairwise disjoint by ``problem_id``.

    ``dev`` is cut from the train side first, never from eval (winner's curse): under
    ``rerank_eval.selection: dev`` the headline method is chosen on it, so the learned energies are
    then fit on train alone; under ``cv`` it joins train in the cross-validation and the final fit.

    When the source has its own train split, eval problems come from its test split and train
    problems from its train/validation splits, so a model is never tuned on test questions. Single
    split sources (SVAMP, MATH-500, BBH, arith) are shuffled by ``seed`` and cut in two. Few-shot
    exemplars (split ``fewshot``) are never used for either.
    """
    if df["problem_id"].duplicated().any():
        dups = df.loc[df["problem_id"].duplicated(), "problem_id"].head(5).tolist()
        raise ValueError(f"Benchmark table has duplicate problem_id values, e.g. {dups}")
    pool = df[df["split"] != "fewshot"]
    has_train = pool["split"].isin(_TRAIN_SPLITS).any() and (pool["split"] == "test").any()
    if has_train:
        eval_pool = _shuffle(pool[pool["split"] == "test"], seed)
        train_pool = _shuffle(pool[pool["split"].isin(_TRAIN_SPLITS)], seed)
    else:
        shuffled = _shuffle(pool, seed)
        cut = len(shuffled) if n_eval is None else n_eval
        eval_pool, train_pool = shuffled.iloc[:cut], shuffled.iloc[cut:]
    evals = _take(eval_pool, n_eval, "eval")
    dev = _take(train_pool, n_dev, "dev")
    train = _take(train_pool.iloc[len(dev):], n_train, "train")
    ids = [set(t["problem_id"]) for t in (train, dev, evals)]
    overlap = (ids[0] & ids[1]) | (ids[0] & ids[2]) | (ids[1] & ids[2])
    assert not overlap, f"train/dev/eval overlap: {sorted(overlap)[:5]}"
    logger.info(
        "Split %d problems (%s) into %d train, %d dev and %d eval (seed %d)",
        len(pool), "source splits" if has_train else "shuffled", len(train), len(dev), len(evals), seed,
    )
    return train.reset_index(drop=True), dev.reset_index(drop=True), evals.reset_index(drop=True)


def _shuffle(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    # Sort first so the result depends only on the ids and the seed, never on load order.
    ordered = df.sort_values("problem_id", kind="stable")
    perm = np.random.default_rng(seed).permutation(len(ordered))
    return ordered.iloc[perm]


def _take(df: pd.DataFrame, n: int | None, name: str) -> pd.DataFrame:
    if n is None:
        return df
    if n > len(df):
        raise ValueError(f"Asked for {n} {name} problems but only {len(df)} are available")
    return df.iloc[:n]
