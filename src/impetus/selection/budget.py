"""Methods compared at equal generated tokens (V2 and EBD against V1).

Tokens are the unit of compute. A V1 method is matched to a new method at the number of candidates
``n`` whose mean tokens per problem first reach the new method's, using each problem's *first*
``n`` candidates, so both are judged on the same problems and the paired bootstrap applies.
:func:`v1_reference` builds the V1 side once, the same way for V2 and EBD.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from impetus.energy.registry import energy_columns
from impetus.selection.metrics import bootstrap_ci, paired_bootstrap
from impetus.selection.report import build_methods
from impetus.selection.rules import Selector, selection_correct


@dataclass(frozen=True)
class V1Reference:
    """V1 at the same budget: the eval candidates with every energy column (``table``), the V1
    selection methods over them, and the headline method (chosen by cross-validation or on dev)."""

    table: pd.DataFrame
    methods: Mapping[str, Selector]
    headline: str

    def resolve(self, names: Sequence[str]) -> list[str]:
        """``names`` with ``"headline"`` replaced by the headline method, duplicates dropped."""
        return list(dict.fromkeys(self.headline if n == "headline" else n for n in names))


def v1_reference(table: pd.DataFrame, rerank_metrics: Mapping[str, Any], vote_for: Sequence[str] = ()) -> V1Reference:
    """The V1 methods of ``v1_rerank`` (``rerank_metrics``: its chosen headline and vote
    temperatures) over ``table``; ``vote_for`` energies also get ``vote_<energy>``, at τ = 1 where
    the selection chose none."""
    taus = dict(rerank_metrics.get("taus", {}))
    for name in vote_for:
        taus.setdefault(name, 1.0)
    return V1Reference(table, build_methods(energy_columns(table.columns), taus), rerank_metrics["headline"]["method"])


def prefix_accuracy(df: pd.DataFrame, method: Selector, n: int) -> pd.Series:
    """Per-problem correctness of ``method`` on each problem's first ``n`` candidates."""
    sub = df[df["sample_idx"] < n]
    return selection_correct(sub, method(sub))


def v1_budget_curve(df: pd.DataFrame) -> pd.Series:
    """Mean tokens per problem of the first ``n`` candidates, for n = 1..N."""
    n_max = int(df["sample_idx"].max()) + 1
    return pd.Series({n: float(df[df["sample_idx"] < n].groupby("problem_id")["n_tokens"].sum().mean())
                      for n in range(1, n_max + 1)})


def v1_seconds(df: pd.DataFrame, n: int) -> float | None:
    """Mean sampling seconds per problem of the first ``n`` candidates (the sampler's per-row time,
    ``gen_seconds``), or None where the table has no such column."""
    if "gen_seconds" not in df:
        return None
    return float(df[df["sample_idx"] < n].groupby("problem_id")["gen_seconds"].sum().mean())


def compare_at_equal_tokens(
    rows: pd.DataFrame, v1: V1Reference, compare_to: Sequence[str], family: str,
    extra: Callable[[pd.DataFrame], dict[str, Any]], n_boot: int, seed: int, at_full_n: bool = False,
) -> dict[str, Any]:
    """``{"methods", "comparisons", "n_problems", "v1_tokens_by_n"}`` for the new methods in ``rows``
    (problem_id, method, correct, tokens, seconds) against ``compare_to`` V1 methods at their budget
    (``name@n``) and, with ``at_full_n``, at N."""
    v1_df, v1_methods = v1.table, v1.methods
    problems = sorted(rows["problem_id"].unique())
    v1_sub = v1_df[v1_df["problem_id"].isin(problems)]
    curve = v1_budget_curve(v1_sub)
    n_max = int(curve.index.max())
    methods: dict[str, dict] = {}
    comparisons: dict[str, dict] = {}

    def v1_entry(name: str, n: int) -> pd.Series:
        c = prefix_accuracy(v1_sub, v1_methods[name], n).reindex(problems).astype(float)
        key = name if n == n_max and at_full_n else f"{name}@{n}"
        methods.setdefault(key, {"accuracy": float(c.mean()), "ci": list(bootstrap_ci(c.to_numpy(), n_boot=n_boot, seed=seed)),
                                 "tokens_per_problem": float(curve[n]), "seconds_per_problem": v1_seconds(v1_sub, n),
                                 "family": "v1", "n": n})
        return c

    if at_full_n:
        for name in compare_to:
            v1_entry(name, n_max)
    for name, g in rows.groupby("method", sort=False):
        g = g.set_index("problem_id").reindex(problems)
        c = g["correct"].to_numpy(float)
        tokens = float(g["tokens"].mean())
        methods[name] = {"accuracy": float(c.mean()), "ci": list(bootstrap_ci(c, n_boot=n_boot, seed=seed)),
                         "tokens_per_problem": tokens, "seconds_per_problem": float(g["seconds"].mean()),
                         "family": family, **extra(g)}
        n = int(next((k for k in curve.index if curve[k] >= tokens), n_max))
        for v1 in compare_to:
            ref = v1_entry(v1, n).to_numpy()
            pb = paired_bootstrap(c, ref, n_boot=n_boot, seed=seed)
            comparisons[f"{name} vs {v1}@{n}"] = {"diff": pb["mean_diff"], "ci": [pb["lo"], pb["hi"]], "p_value": pb["p_value"]}
    return {"methods": methods, "n_problems": len(problems), "comparisons": comparisons,
            "v1_tokens_by_n": {int(k): v for k, v in curve.items()}}


def over_budget_note(result: Mapping[str, Any], families: Sequence[str]) -> str:
    """A sentence naming the new methods that spend more tokens than V1's N candidates (then
    ``name@N`` gives V1 *fewer* tokens), or ``""``."""
    v1_max = max(result["v1_tokens_by_n"].values())
    over = [n for n, m in result["methods"].items() if m["family"] in families and m["tokens_per_problem"] > v1_max]
    if not over:
        return ""
    return (f"V1's N candidates spend {v1_max:.0f} tokens per problem, fewer than {', '.join(over)}: there V1 is "
            "compared at N, with fewer tokens.")
