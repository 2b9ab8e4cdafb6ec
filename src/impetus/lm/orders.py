"""Several prompt variants per problem (orders of multiple-choice answers) through one sampler run.

The runner samples ``n`` rows per prompt and keys shards by problem id. With ``k`` orders of a
problem's choices, each (problem, order) becomes one runner item under the id
``<problem_id>@order<j>`` with ``n / k`` samples; afterwards the rows get their problem id back,
an ``order`` column and ``sample_idx = j * (n / k) + s``, so every later stage sees ``n``
candidates per problem, as without orders. Row seeds derive from the item id, so the candidates do
not depend on the shard size or on which other problems were sampled.
"""

from __future__ import annotations

import pandas as pd

SEP = "@order"


def per_order(n: int, orders: int) -> int:
    """Samples per order; ``n`` must split evenly over the orders."""
    if orders < 1 or n % orders:
        raise ValueError(f"sampling.n = {n} does not split evenly over sampling.choice_orders = {orders}")
    return n // orders


def as_items(prompts: pd.DataFrame) -> pd.DataFrame:
    """``problem_id, prompt`` runner items, one per (problem, order) of a prompts table with ``order``."""
    items = prompts[["problem_id", "prompt"]].copy()
    items["problem_id"] = prompts["problem_id"].astype(str) + SEP + prompts["order"].astype(int).astype(str)
    return items


def problem_of(item_id: str) -> str:
    """The problem id of a runner item id (itself when it names no order)."""
    return item_id.rsplit(SEP, 1)[0] if SEP in item_id else item_id


def merge(candidates: pd.DataFrame, n_per_order: int) -> pd.DataFrame:
    """Runner rows of order items back to ``n`` candidates per problem, with an ``order`` column."""
    out = candidates.copy()
    split = out["problem_id"].astype(str).str.rsplit(SEP, n=1, expand=True)
    out["problem_id"], out["order"] = split[0], split[1].astype(int)
    out["sample_idx"] = out["order"] * n_per_order + out["sample_idx"].astype(int)
    # No re-sort: items come problem-major and order-minor, so rows are already in problem order
    # with sample_idx ascending.
    return out.reset_index(drop=True)
