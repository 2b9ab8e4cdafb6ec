"""Adaptive N, evaluated offline: when would a problem's sampling have stopped, and at what accuracy?

DeepConf (Fu et al., "Deep Think with Confidence", arXiv:2508.15260) samples traces in waves and
stops a problem once the weighted consensus on its leading answer passes a threshold, reporting up
to 84.7% fewer tokens. Every rule here sees only a problem's first ``k`` candidates (``k`` = one
wave, two waves, ... up to ``N_max``) and is paired with the vote it stops:

- ``vote_margin``: majority vote; stops when the leading answer's share of the votes reaches the
  threshold, or when it can no longer be overtaken by the samples left in the budget;
- ``energy_vote``: energy-weighted vote ``sum exp(-E/tau)`` (z-scored per problem, as
  :func:`~impetus.selection.rules.select_weighted_vote`); stops on the leading answer's weight share;
- ``deepconf``: confidence-weighted vote with each trace's DeepConf lowest-group confidence as
  weight; stops on the leading answer's weight share (DeepConf's consensus threshold).

Because a problem's k-th candidate is the same row (same seed) with or without adaptive N, the
adaptive candidates are a prefix of a full-N run, so evaluating a rule offline on full-N
candidates is exact: :func:`wave_table` computes, per problem and prefix length, the consensus
share, whether the vote is right and the tokens spent; thresholds are then chosen on the selection
data (all train-side problems with out-of-fold learned energies under ``selection: cv``, else dev)
(:func:`choose_threshold`) and measured on eval (:func:`evaluate_rule`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from impetus.selection.rules import selection_correct

RULES = ("vote_margin", "energy_vote", "deepconf")


@dataclass(frozen=True)
class RuleSpec:
    """A stopping rule and the vote it stops: ``weight_col`` None = one vote per candidate."""

    name: str
    weight_col: str | None = None
    tau: float = 1.0
    margin_stop: bool = False  # also stop when the leader cannot be overtaken by the samples left


def _weights(d: pd.DataFrame, spec: RuleSpec) -> np.ndarray:
    """Per-candidate vote weights within each problem's prefix."""
    if spec.weight_col is None:
        return np.ones(len(d))
    e = d[spec.weight_col].astype(float)
    by = e.groupby(d["problem_id"], sort=False)
    e = e.fillna(by.transform("max")).fillna(0.0)
    if spec.name == "deepconf":  # a negated confidence: weight = confidence, clipped at 0
        return np.clip(-e.to_numpy(), 0.0, None) + 1e-12
    sd = by.transform("std", ddof=0)
    z = ((e - by.transform("mean")) / sd.where(sd > 0)).fillna(0.0)
    z = z - z.groupby(d["problem_id"], sort=False).transform("min")
    return np.exp(-z.to_numpy() / spec.tau)


def prefix_consensus(prefix: pd.DataFrame, spec: RuleSpec, n_max: int, k: int) -> pd.DataFrame:
    """The vote of ``spec`` on each problem's first ``k`` of ``n_max`` candidates (``prefix``).

    Returns, indexed by problem_id: ``share`` (the leading answer's share of the vote weight, what
    a threshold is compared with), ``settled`` (with ``spec.margin_stop``: the leader can no longer
    be overtaken by the ``n_max - k`` samples left) and ``chosen`` (the leading answer's lowest
    sample_idx; no answer at all: sample 0). Ties between answers go to the one seen first.
    """
    d = prefix.assign(_w=_weights(prefix, spec), _ans=prefix["answer"].astype(object))
    valid = d[d["_ans"].notna()]
    agg = valid.groupby(["problem_id", "_ans"], sort=False).agg(w=("_w", "sum"), c=("_w", "size"),
                                                               first=("sample_idx", "min"))
    agg = agg.reset_index().sort_values(["problem_id", "w", "first"], ascending=[True, False, True], kind="mergesort")
    agg["share"] = agg["w"] / agg.groupby("problem_id")["w"].transform("sum")
    ranked = agg.groupby("problem_id", sort=True)
    lead = ranked.nth(0).set_index("problem_id")
    runner_up = ranked.nth(1).set_index("problem_id")["c"].reindex(lead.index).fillna(0)
    out = pd.DataFrame(index=pd.Index(sorted(prefix["problem_id"].unique()), name="problem_id"))
    out["share"] = lead["share"].reindex(out.index).fillna(0.0)
    # With one vote per sample, the leader is settled once the samples left cannot close the gap.
    settled = (lead["c"] - runner_up > n_max - k) if spec.margin_stop else pd.Series(False, index=lead.index)
    out["settled"] = settled.reindex(out.index).fillna(False).astype(bool)
    out["chosen"] = lead["first"].reindex(out.index).fillna(0).astype(int)
    return out


def wave_ends(wave: int, n_max: int) -> list[int]:
    """The prefix lengths a rule is checked at: ``wave, 2*wave, ...`` and ``n_max``."""
    return sorted({*range(wave, n_max, wave), n_max})


def wave_table(df: pd.DataFrame, spec: RuleSpec, wave: int) -> pd.DataFrame:
    """Rows (problem_id, k, share, settled, correct, tokens) for k = wave, 2*wave, ..., N_max.

    ``df`` holds every candidate of a full-N run (``answer``, ``correct``, ``n_tokens``,
    ``sample_idx`` 0..N-1 and the rule's weight column); ``tokens`` is the prefix's total.
    """
    n_max = int(df.groupby("problem_id")["sample_idx"].max().max()) + 1
    ks = wave_ends(wave, n_max)
    parts = []
    for k in ks:
        prefix = df[df["sample_idx"] < k]
        v = prefix_consensus(prefix, spec, n_max, k)
        sel = v["chosen"].rename("sample_idx")
        v["correct"] = selection_correct(prefix, sel).reindex(v.index).astype(bool)
        v["tokens"] = prefix.groupby("problem_id")["n_tokens"].sum().reindex(v.index)
        parts.append(v.assign(k=k).reset_index())
    return pd.concat(parts, ignore_index=True)


def fires(consensus: pd.DataFrame, threshold: float) -> pd.Series:
    """Whether a problem stops after the prefix ``consensus`` was computed on (a
    :func:`prefix_consensus` frame): its leader's share reaches ``threshold`` or it is settled.
    The one stopping condition of both the offline evaluation and the online sampler
    (:mod:`impetus.selection.online`)."""
    return (consensus["share"] >= threshold - 1e-12) | consensus["settled"]


def evaluate_rule(table: pd.DataFrame, threshold: float) -> dict[str, float]:
    """Stop each problem at its first wave whose share >= ``threshold`` (or settled); else N_max."""
    t = table.sort_values(["problem_id", "k"])
    n_max = int(t["k"].max())
    fire = fires(t, threshold) | (t["k"] == n_max)
    stop = t[fire].groupby("problem_id").head(1)
    full = t[t["k"] == n_max]
    return {
        "threshold": float(threshold),
        "accuracy": float(stop["correct"].mean()),
        "accuracy_full_n": float(full["correct"].mean()),
        "tokens_per_problem": float(stop["tokens"].mean()),
        "tokens_per_problem_full_n": float(full["tokens"].mean()),
        "tokens_saved": float(1.0 - stop["tokens"].sum() / max(full["tokens"].sum(), 1)),
        "mean_k": float(stop["k"].mean()),
    }


def choose_threshold(table: pd.DataFrame, thresholds: Sequence[float], max_drop: float) -> float:
    """On the selection data: the threshold saving the most tokens whose accuracy is within ``max_drop`` of the
    same vote at N_max (ties: the stricter threshold); if none is, the strictest threshold."""
    rows = [evaluate_rule(table, t) for t in sorted(thresholds)]
    ok = [r for r in rows if r["accuracy"] >= r["accuracy_full_n"] - max_drop - 1e-12]
    if not ok:
        return float(max(thresholds))
    best = max(r["tokens_saved"] for r in ok)
    return max(r["threshold"] for r in ok if r["tokens_saved"] >= best - 1e-12)


def rule_specs(energy_col: str, tau: float) -> dict[str, RuleSpec]:
    """The three rules: majority margin, energy-weighted vote of ``energy_col``, DeepConf confidence."""
    return {
        "vote_margin": RuleSpec("vote_margin", margin_stop=True),
        "energy_vote": RuleSpec("energy_vote", weight_col=energy_col, tau=tau),
        "deepconf": RuleSpec("deepconf", weight_col="neg_deepconf_lowest_group"),
    }


def adaptive_report(
    dev: pd.DataFrame, evals: pd.DataFrame, specs: dict[str, RuleSpec], wave: int,
    thresholds: Sequence[float], max_drop: float,
) -> tuple[dict[str, dict], pd.DataFrame]:
    """Each rule's threshold chosen on ``dev`` (the selection data: train + dev out of fold, or dev),
    then measured on ``evals``.

    Returns ``{rule: {threshold, accuracy, accuracy_full_n, tokens_saved, ...}}`` (eval numbers at
    the chosen threshold; ``dev``: the selection data's numbers at it) and the eval points of every (rule, threshold) and of every prefix
    length k without stopping (``rule = "<rule>@k"``), for the accuracy-vs-tokens plot.
    """
    out, points = {}, []
    for name, spec in specs.items():
        if spec.weight_col is not None and (spec.weight_col not in dev or spec.weight_col not in evals):
            continue
        chosen = choose_threshold(wave_table(dev, spec, wave), thresholds, max_drop)
        table = wave_table(evals, spec, wave)
        out[name] = {**evaluate_rule(table, chosen), "dev": evaluate_rule(wave_table(dev, spec, wave), chosen)}
        points += [{"rule": name, **evaluate_rule(table, t)} for t in thresholds]
        per_k = table.groupby("k").agg(accuracy=("correct", "mean"), tokens_per_problem=("tokens", "mean"))
        points += [{"rule": f"{name}@k", "threshold": float(k), **row} for k, row in per_k.iterrows()]
    return out, pd.DataFrame(points)
