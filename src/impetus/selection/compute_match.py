"""One compute-matched choice among V1, V2 and EBD (Kedro-free).

A user asks: at my token budget, which family and setting should I run? Every *option* is one
family at one setting, with each problem's correctness and generated tokens on eval and, where the
family ran there, on dev: V1 methods on each problem's first ``n`` candidates for n = 1..N,
EBD's two answers after each MH step (:func:`impetus.decoding.evaluate.evaluate_ebd`'s
``per_step``), V2's methods at their chosen steps (on dev: the chosen settings' dev run from each
problem's first sample, :func:`impetus.latent.evaluate.choose_settings`). For a budget of ``b`` ×
the tokens of one V1 sample, :func:`choose` takes the option with the best *dev* accuracy among those whose dev tokens fit, and
(by default) keeps the V1 headline at the largest ``n`` that fits unless that option beats it on dev
with a paired CI above 0, so the choice uses train-side data only; it is then measured once on
eval, paired against that same headline. An option without a dev
measurement (EBD or V2 without a dev grid, V2 from the V1 headline's choice) is drawn but cannot be
chosen. All options are compared
on the eval (and dev) problems they share. The learned energies measured on eval are refit on every
train-side problem, dev included, so on dev each problem's learned energies come from the ensemble's
fold member that held it out (:func:`impetus.learned.fitting.dev_held_out`; V1's options here, EBD's
starts and tilt, V2's rewards), or an option that uses them would look better on dev than on eval. Left
in sample: the hybrid's ~15 combination weights, and V2 ``gradient`` mode's LatentEBM forward.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

from impetus.selection.budget import prefix_accuracy
from impetus.selection.metrics import bootstrap_ci, paired_bootstrap
from impetus.selection.rules import Selector


@dataclass(frozen=True)
class Option:
    """One family at one setting: per-problem correctness and tokens (Series by problem_id) on eval,
    and on dev where it ran there (None otherwise)."""

    family: str
    name: str
    eval_correct: pd.Series
    eval_tokens: pd.Series
    dev_correct: pd.Series | None = None
    dev_tokens: pd.Series | None = None

    def on(self, eval_ids: Sequence[str], dev_ids: Sequence[str] | None) -> Option:
        """The option on the given problems (dev dropped when it lacks any of them)."""
        dev_ok = self.dev_correct is not None and dev_ids is not None and set(dev_ids) <= set(self.dev_correct.index)
        return Option(self.family, self.name, self.eval_correct.reindex(eval_ids), self.eval_tokens.reindex(eval_ids),
                      self.dev_correct.reindex(dev_ids) if dev_ok else None,
                      self.dev_tokens.reindex(dev_ids) if dev_ok else None)


def v1_options(eval_table: pd.DataFrame, dev_table: pd.DataFrame | None, methods: Mapping[str, Selector],
               names: Sequence[str]) -> list[Option]:
    """V1 method ``name`` on each problem's first ``n`` candidates, n = 1..N, as ``name@n``."""
    def per_problem(table: pd.DataFrame, sel: Selector, n: int) -> tuple[pd.Series, pd.Series]:
        sub = table[table["sample_idx"] < n]
        return (prefix_accuracy(table, sel, n).astype(float),
                sub.groupby("problem_id")["n_tokens"].sum().astype(float))

    n_max = int(eval_table["sample_idx"].max()) + 1
    out = []
    for name in names:
        for n in range(1, n_max + 1):
            ev = per_problem(eval_table, methods[name], n)
            dv = per_problem(dev_table, methods[name], n) if dev_table is not None else (None, None)
            out.append(Option("v1", f"{name}@{n}", *ev, *dv))
    return out


def _per_problem(rows: pd.DataFrame | None) -> tuple[pd.Series | None, pd.Series | None]:
    """``(correct, tokens)`` by problem_id of one option's rows; ``(None, None)`` without any."""
    if rows is None or not len(rows):
        return None, None
    by = rows.set_index("problem_id")
    return by["correct"].astype(float), by["tokens"].astype(float)


def ebd_options(per_step: pd.DataFrame) -> list[Option]:
    """EBD's answers after each MH step (``per_step``: split, problem_id, method, step, correct, tokens)."""
    dev = dict(list(per_step[per_step["split"] == "dev"].groupby(["method", "step"])))
    return [Option("ebd", f"{method}@{step} steps", *_per_problem(g), *_per_problem(dev.get((method, step))))
            for (method, step), g in per_step[per_step["split"] == "eval"].groupby(["method", "step"])]


def v2_options(answers: pd.DataFrame, dev_answers: pd.DataFrame | None = None) -> list[Option]:
    """V2's methods on eval (``v2_answers``: problem_id, method, correct, tokens) and, for those its dev
    grid chose (``v2_dev_answers``, same columns: the first sample's start only), on dev."""
    dev = {} if dev_answers is None else dict(list(dev_answers.groupby("method")))
    return [Option("v2", str(m), *_per_problem(g), *_per_problem(dev.get(m))) for m, g in answers.groupby("method")]


def shared(options: Sequence[Option]) -> list[Option]:
    """Every option on the eval problems all share, and on the dev problems all dev-measured ones share."""
    eval_ids = sorted(set.intersection(*(set(o.eval_correct.dropna().index) for o in options)))
    devs = [set(o.dev_correct.dropna().index) for o in options if o.dev_correct is not None]
    dev_ids = sorted(set.intersection(*devs)) if devs else None
    return [o.on(eval_ids, dev_ids) for o in options]


def choose(options: Sequence[Option], budget_tokens: float) -> Option | None:
    """The dev-measured option with the best dev accuracy among those whose mean dev tokens fit
    ``budget_tokens`` (ties: fewer tokens, then name); None when none fits."""
    fits = [o for o in options if o.dev_correct is not None and float(o.dev_tokens.mean()) <= budget_tokens]
    if not fits:
        return None
    return min(fits, key=lambda o: (-float(o.dev_correct.mean()), float(o.dev_tokens.mean()), o.name))


def _summary(o: Option, n_boot: int, seed: int) -> dict[str, Any]:
    return {"family": o.family, "name": o.name, "eval_accuracy": float(o.eval_correct.mean()),
            "eval_ci": list(bootstrap_ci(o.eval_correct.to_numpy(), n_boot=n_boot, seed=seed)),
            "eval_tokens": float(o.eval_tokens.mean()),
            "dev_accuracy": None if o.dev_correct is None else float(o.dev_correct.mean()),
            "dev_tokens": None if o.dev_tokens is None else float(o.dev_tokens.mean())}


def compute_matched(options: Sequence[Option], budgets: Sequence[float], headline: str, n_boot: int,
                    seed: int, rule: Literal["best_dev", "beats_headline"] = "beats_headline") -> dict[str, Any]:
    """``compute_match_metrics``: every option on the shared problems, and per budget (× one V1
    sample's mean dev tokens) the dev choice, its eval accuracy and its paired difference from the
    V1 ``headline`` at the largest ``n`` whose dev tokens fit.

    ``rule``: ``best_dev`` takes the best dev accuracy that fits; ``beats_headline`` takes it only
    when its paired dev CI against the headline at that budget lies above 0, else the headline. With
    tens of options and a few dozen dev problems the best dev score is mostly luck (the winner's
    curse), so by default another family must show it beats the headline before it replaces it."""
    opts = shared(options)
    if not any(o.dev_correct is not None for o in opts):
        raise ValueError("no option was measured on dev, so none can be chosen on train-side data "
                         "(V1 needs the dev split's candidates)")
    one = next(o for o in opts if o.family == "v1" and o.name.endswith("@1") and o.dev_tokens is not None)
    unit = float(one.dev_tokens.mean())
    rows = []
    for b in budgets:
        best = choose(opts, b * unit)
        fit = [o for o in opts if o.family == "v1" and o.name.startswith(f"{headline}@")
               and float(o.dev_tokens.mean()) <= b * unit]
        ref = max(fit, key=lambda o: int(o.name.rsplit("@", 1)[1])) if fit else None
        dev_gap = (paired_bootstrap(best.dev_correct.to_numpy(), ref.dev_correct.to_numpy(), n_boot=n_boot, seed=seed)
                   if best is not None and ref is not None else None)
        pick = ref if rule == "beats_headline" and dev_gap is not None and not dev_gap["lo"] > 0 else best
        row: dict[str, Any] = {"budget_x": float(b), "budget_tokens": b * unit,
                               "chosen": None if pick is None else _summary(pick, n_boot, seed),
                               "best_dev": None if best is None else _summary(best, n_boot, seed),
                               "best_dev_vs_headline_on_dev": dev_gap,
                               "v1_headline": None if ref is None else _summary(ref, n_boot, seed)}
        if pick is not None and ref is not None:
            row["vs_headline"] = paired_bootstrap(pick.eval_correct.to_numpy(), ref.eval_correct.to_numpy(),
                                                  n_boot=n_boot, seed=seed)
        rows.append(row)
    measured = [o for o in opts if o.dev_correct is not None]
    return {"headline_v1": headline, "rule": rule, "unit_tokens": unit, "eval_problems": int(len(opts[0].eval_correct)),
            "dev_problems": int(len(measured[0].dev_correct)),
            "not_choosable": sorted({o.family for o in opts} - {o.family for o in measured}),
            "budgets": rows, "options": [_summary(o, n_boot, seed) for o in opts]}
