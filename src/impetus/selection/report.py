"""The V1 evaluation: every selection method on the same candidates, chosen on train-side data, measured on eval.

Kedro-free so a notebook can rerun it on any candidates table. Two rules keep the numbers honest:

- **Chosen on train-side data, measured on eval.** The energy-weighted vote's temperature (per
  energy) and the headline method are picked by K-fold cross-validation over every train-side
  problem (train + dev, :mod:`impetus.selection.crossval`; the default), or on the dev split alone
  (``selection: dev``, the old rule); eval only measures. Picking the best of ~30 methods on eval
  would report a winner's curse. The full eval table is still shown, marked post hoc.
- **Costs where they happen.** A method's seconds per problem include the scoring passes it needs
  (cost keys from :mod:`impetus.energy.registry`), not only the argmin.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from impetus.energy.registry import cost_keys
from impetus.selection.crossval import NOT_CHOSEN, choose_by_cv, cross_validate, shortlisted
from impetus.selection.methods import BASELINES, build_methods, choose_taus
from impetus.selection.metrics import evaluate_methods, paired_bootstrap
from impetus.selection.rules import Selector, selection_correct

__all__ = ["BASELINES", "build_methods", "choose_taus", "method_costs", "evaluate_split", "choose_on_dev",
           "dev_selection", "cv_selection", "headline", "compare_methods", "markdown_report", "rerank_evaluation"]


def method_costs(
    methods: Mapping[str, Selector], stage_seconds: Mapping[str, float], hybrid_cols: Sequence[str]
) -> dict[str, float]:
    """Seconds (whole split) each method needs beyond sampling: the sum of its energy's cost keys."""
    costs = {}
    for name in methods:
        col = name.removeprefix("vote_")
        keys = cost_keys(col, hybrid_cols) if name not in BASELINES else set()
        costs[name] = float(sum(stage_seconds.get(k, 0.0) for k in keys))
    return costs


def evaluate_split(
    df: pd.DataFrame, methods: Mapping[str, Selector], stage_seconds: Mapping[str, float],
    hybrid_cols: Sequence[str], sampling_seconds_per_problem: float, n_boot: int, seed: int,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Every method once on ``df``: metrics with costs, and the chosen ``sample_idx`` per problem."""
    costs = method_costs(methods, stage_seconds, hybrid_cols)
    selections, select_seconds = {}, {}
    for name, sel in methods.items():
        t0 = time.perf_counter()
        selections[name] = sel(df)
        select_seconds[name] = time.perf_counter() - t0
    result = evaluate_methods(df, methods, n_boot=n_boot, seed=seed, selections=selections)
    n_problems = max(result["n_problems"], 1)
    for name, m in result["methods"].items():
        m["seconds_per_problem"] = (costs[name] + select_seconds[name]) / n_problems
        m["cost_ratio_vs_sampling"] = (
            m["seconds_per_problem"] / sampling_seconds_per_problem if sampling_seconds_per_problem else None
        )
    result["sampling_seconds_per_problem"] = sampling_seconds_per_problem
    table = pd.DataFrame(selections)
    table.index.name = "problem_id"
    return result, table.reset_index()


def choose_on_dev(dev_result: Mapping[str, Any], exclude: Sequence[str] = NOT_CHOSEN,
                  shortlist: Sequence[str] | None = None) -> str:
    """The shortlisted method (:func:`~impetus.selection.crossval.shortlisted`) with the best dev
    accuracy (ties: the one listed first in ``shortlist``, then cheaper, then name, as
    :func:`~impetus.selection.crossval.choose_by_cv`). Majority may win: then the honest headline is
    that no energy beat majority vote on dev."""
    methods = dev_result["methods"]  # one split, no folds: the CV rule's tie order without fold wins
    return choose_by_cv({n: {"accuracy": m["accuracy"], "fold_wins": 0} for n, m in methods.items()},
                        {n: m.get("seconds_per_problem") or 0.0 for n, m in methods.items()}, exclude, shortlist)


def dev_selection(
    dev: pd.DataFrame, energy_cols: Sequence[str], hybrid_cols: Sequence[str], dev_seconds: Mapping[str, float],
    params: Any,
) -> dict[str, Any]:
    """The old rule (``selection: dev``): vote temperatures and the headline chosen on the dev split.

    Returns the selection record :func:`rerank_evaluation` takes, shaped as
    :func:`impetus.selection.crossval.cross_validate`'s (``folds`` None).
    """
    taus = choose_taus(dev, params.weighted_vote, params.tau_grid)
    dev_result, _ = evaluate_split(dev, build_methods(energy_cols, taus), dev_seconds, hybrid_cols,
                                   _sampling_seconds_per_problem(dev), n_boot=params.n_boot, seed=params.seed)
    n = max(dev_result["n_problems"], 1)
    methods = {name: {"accuracy": m["accuracy"], "ci": m["ci"], "se": float(np.sqrt(m["accuracy"] * (1 - m["accuracy"]) / n))}
               for name, m in dev_result["methods"].items()}
    return {"selected_on": "dev", "folds": None, "n_problems": dev_result["n_problems"],
            "method": choose_on_dev(dev_result, shortlist=params.shortlist), "methods": methods, "taus": taus,
            "shortlist": shortlisted(dev_result["methods"], params.shortlist)}


def cv_selection(
    train_side: pd.DataFrame, fold_of: pd.Series, energy_cols: Sequence[str], hybrid_cols: Sequence[str],
    stage_seconds: Mapping[str, float], params: Any,
) -> dict[str, Any]:
    """The default rule (``selection: cv``): :func:`impetus.selection.crossval.cross_validate` on the
    train-side candidates (learned energies already out of fold), near-ties broken by registry cost."""
    cols = [c for c in energy_cols if c in train_side.columns]
    n = max(train_side["problem_id"].nunique(), 1)
    costs = {k: v / n for k, v in method_costs(build_methods(cols, {c: 1.0 for c in params.weighted_vote}),
                                               stage_seconds, hybrid_cols).items()}
    return cross_validate(train_side, fold_of, cols, params.weighted_vote, params.tau_grid, costs, params.shortlist)


def headline(selection: Mapping[str, Any], eval_result: Mapping[str, Any]) -> dict[str, Any]:
    """The chosen method's eval accuracy with its CI, gain over one sample and cost, and how it was chosen."""
    name = selection["method"]
    m = eval_result["methods"][name]
    chosen = selection["methods"][name]
    out = {
        "method": name, "selected_on": selection["selected_on"], "folds": selection["folds"],
        "n_problems": selection["n_problems"], "selection_accuracy": chosen["accuracy"], "selection_se": chosen["se"],
        "shortlist": selection.get("shortlist"),
        "accuracy": m["accuracy"], "ci": m["ci"], "gain_vs_single": m["gain_vs_single"],
        "gain_vs_single_ci": m["gain_vs_single_ci"], "gain_vs_majority": m["gain_vs_majority"],
        "cost_ratio_vs_sampling": m.get("cost_ratio_vs_sampling"),
        "post_hoc_best_on_eval": max(
            (n for n in eval_result["methods"] if n not in BASELINES), key=lambda n: eval_result["methods"][n]["accuracy"]
        ),
    }
    if selection["selected_on"] == "dev":
        out["dev_accuracy"] = chosen["accuracy"]
    return out


def compare_methods(df: pd.DataFrame, selections: pd.DataFrame, a: str, b: str, n_boot: int, seed: int) -> dict:
    """Paired bootstrap of method ``a`` minus method ``b`` on the same problems."""
    sel = selections.set_index("problem_id")
    ca = selection_correct(df, sel[a]).to_numpy(float)
    cb = selection_correct(df, sel[b]).to_numpy(float)
    return paired_bootstrap(ca, cb, n_boot=n_boot, seed=seed)


def _fmt(x: float | None, pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "–"
    return f"{100 * x:.1f}" if pct else f"{x:.3f}"


def summary_paragraph(result: Mapping[str, Any]) -> str:
    """One paragraph: the dev-chosen method, its eval accuracy vs one sample with the CI, its cost."""
    h = result["headline"]
    lo, hi = h["ci"]
    glo, ghi = h["gain_vs_single_ci"]
    cost = h.get("cost_ratio_vs_sampling")
    counts = result.get("counts", {})
    return (
        f"**{_chosen_on(h)}: `{h['method']}`** ({'out of fold' if h.get('selected_on') == 'cv' else 'on dev'} "
        f"{_fmt(h['selection_accuracy'])}% ± {_fmt(h['selection_se'])} SE). On "
        f"{result['n_problems']} held-out eval problems (N = {result['n_candidates']}) it scores "
        f"{_fmt(h['accuracy'])}% [{_fmt(lo)}, {_fmt(hi)}] vs one sample {_fmt(result['single'])}% "
        f"({100 * h['gain_vs_single']:+.1f} points [{100 * glo:+.1f}, {100 * ghi:+.1f}]) and majority vote "
        f"{_fmt(result['majority'])}% ({100 * h['gain_vs_majority']:+.1f}), at "
        f"{'–' if cost is None else f'{100 * cost:.1f}%'} of the sampling time. Oracle (pass@N) "
        f"{_fmt(result['oracle'])}%. Eval candidates without an answer: {counts.get('n_no_answer', '–')}, "
        f"truncated by max_new_tokens: {counts.get('n_truncated', '–')} of {result['n_rows']}."
    )


def _chosen_on(h: Mapping[str, Any]) -> str:
    """'Chosen on dev (80 problems)' or 'Chosen by 3-fold cross-validation over 240 train-side problems'."""
    if h.get("selected_on") == "cv":
        return f"Chosen by {h['folds']}-fold cross-validation over {h['n_problems']} train-side problems"
    return f"Chosen on dev ({h.get('n_problems', '?')} problems)"


def _selection_label(result: Mapping[str, Any]) -> str:
    return "out of fold on train + dev" if result["headline"].get("selected_on") == "cv" else "on dev"


def cv_lines(selection: Mapping[str, Any], fit: str = "learned energies and vote temperature") -> list[str]:
    """The cross-validation table: every method's pooled out-of-fold accuracy, its SE and fold wins
    (``fit``: what each fold fits on the other folds)."""
    if selection.get("selected_on") != "cv":
        return []
    k = selection["folds"]
    lines = [
        "", f"### Selection: {k}-fold cross-validation over {selection['n_problems']} train-side problems", "",
        f"Each method scored on each fold with its {fit} fit on the other "
        f"folds. Headline: the highest pooled out-of-fold accuracy {_among(selection)}(exact ties: more folds "
        "won, then the one listed first in the shortlist, then cheaper). Folds won: folds where the method had the best accuracy (a tie is a win for each).", "",
        "| method | out-of-fold acc % | SE (pts) | per fold % | folds won |", "|---|---:|---:|---|---:|",
    ]
    for name, m in sorted(selection["methods"].items(), key=lambda kv: -kv[1]["accuracy"]):
        mark = " ◀ headline" if name == selection["method"] else ""
        per_fold = " / ".join(_fmt(a) for a in m["fold_accuracy"])
        wins = "–" if name in ("first", "oracle") else f"{m['fold_wins']}/{k}"
        lines.append(f"| {name}{mark} | {_fmt(m['accuracy'])} | {_fmt(m['se'])} | {per_fold} | {wins} |")
    return lines


def _among(selection: Mapping[str, Any]) -> str:
    """'among the shortlist (a, b) ' when the headline was chosen from part of the table."""
    short = selection.get("shortlist")
    if not short or len(short) >= len([m for m in selection["methods"] if m not in NOT_CHOSEN]):
        return ""
    return f"among the shortlist `rerank_eval.shortlist` ({', '.join(f'`{m}`' for m in short)}) "


def adaptive_lines(adaptive: Mapping[str, Mapping[str, Any]], chosen_on: str = "on dev",
                   online: Mapping[str, Any] | None = None) -> list[str]:
    """The adaptive-N table: each rule at its threshold chosen on the selection data, measured on eval;
    or, when eval was sampled with adaptive N online, what it kept (the offline table needs full N)."""
    if online:
        return ["", "### Adaptive N online", "",
                f"Eval was sampled in waves, each problem stopped once settled: {online['samples_per_problem']:.2f} "
                f"samples per problem on average ({online['min']}–{online['max']}), {online['tokens_per_problem']:.0f} "
                "tokens per problem. Every method above chose among the rows kept, so accuracy against N and the "
                "offline adaptive table (which need all N rows) are left out; sampling.adaptive: off gives them."]
    if not adaptive:
        return []
    lines = [
        "", f"### Adaptive N (thresholds chosen {chosen_on}, measured on eval)", "",
        "| rule | threshold | acc % | acc % at N_max (same vote) | tokens/problem | at N_max | tokens saved | mean N |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in adaptive.items():
        lines.append(
            f"| {name} | {r['threshold']:g} | {_fmt(r['accuracy'])} | {_fmt(r['accuracy_full_n'])} | "
            f"{r['tokens_per_problem']:.0f} | {r['tokens_per_problem_full_n']:.0f} | {100 * r['tokens_saved']:.1f}% | "
            f"{r['mean_k']:.1f} |"
        )
    return lines


def markdown_report(result: Mapping[str, Any], title: str = "V1 reranking") -> str:
    """Summary paragraph first, then every method's eval numbers (post hoc), best first."""
    rows = sorted(result["methods"].items(), key=lambda kv: -kv[1]["accuracy"])
    selection = result["selection"]
    chosen_on = _selection_label(result)
    lines = [
        f"## {title}", "", summary_paragraph(result), "",
        f"Every method on eval (**post hoc**: the best row here is not the headline, which was chosen "
        f"{chosen_on}). Sampling: {result['sampling_seconds_per_problem']:.2f} s/problem. Vote temperatures "
        f"(chosen {'on all train-side problems' if selection['selected_on'] == 'cv' else 'on dev'}): "
        f"{', '.join(f'{k} {v:g}' for k, v in result.get('taus', {}).items()) or '–'}.",
        "",
        f"| method | {selection['selected_on']} acc % | acc % | 95% CI | vs single (pts) [95% CI] | vs majority (pts) | gap closure "
        "| AUROC | AUROC within | s/problem | cost / sampling |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in rows:
        lo, hi = m["ci"]
        glo, ghi = m["gain_vs_single_ci"]
        ratio = m.get("cost_ratio_vs_sampling")
        mark = " ◀ headline" if name == result["headline"]["method"] else ""
        lines.append(
            f"| {name}{mark} | {_fmt((selection['methods'].get(name) or {}).get('accuracy'))} | {_fmt(m['accuracy'])} | "
            f"[{_fmt(lo)}, {_fmt(hi)}] | {100 * m['gain_vs_single']:+.1f} [{100 * glo:+.1f}, {100 * ghi:+.1f}] | "
            f"{100 * m['gain_vs_majority']:+.1f} | {_fmt(m['gap_closure'], pct=False)} | "
            f"{_fmt(m['auroc'], pct=False)} | {_fmt(m.get('auroc_within'), pct=False)} | "
            f"{m['seconds_per_problem']:.4f} | {'–' if ratio is None else f'{100 * ratio:.2f}%'} |"
        )
    lines += cv_lines(selection)
    lines += adaptive_lines(result.get("adaptive", {}), chosen_on, result.get("adaptive_online"))
    lines += [
        "",
        "Gap closure = (acc − majority) / (oracle − majority). AUROC: the energy as a detector of right vs "
        "wrong candidates pooled over problems; AUROC within: the same inside each problem with both right "
        "and wrong candidates, averaged (what a reranker can use). Cost includes the scoring passes each "
        "method needs.",
    ]
    return "\n".join(lines) + "\n"


def _sampling_seconds_per_problem(df: pd.DataFrame) -> float:
    # The sampler attributes each row its share of every forward pass, so a problem's sum is its cost.
    return float(df.groupby("problem_id")["gen_seconds"].sum().mean())


def rerank_evaluation(
    dev: pd.DataFrame | None, evals: pd.DataFrame, energy_cols: Sequence[str], hybrid_cols: Sequence[str],
    dev_seconds: Mapping[str, float], eval_seconds: Mapping[str, float], params: Any,
    selection: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """The whole V1 evaluation (``params``: :class:`impetus.framework.config.RerankParams`).

    ``selection`` (from :func:`cv_selection`) says which method is the headline and which vote
    temperatures to use; None chooses both on ``dev`` (:func:`dev_selection`). Every method is then
    measured once on ``evals``. Returns the result (eval metrics per method, the selection record
    with its per-method accuracies, taus, headline, counts) and the eval selections table.
    """
    if selection is None:
        selection = dev_selection(dev, energy_cols, hybrid_cols, dev_seconds, params)
    methods = build_methods(energy_cols, selection["taus"])
    result, selections = evaluate_split(evals, methods, eval_seconds, hybrid_cols,
                                        _sampling_seconds_per_problem(evals), n_boot=params.n_boot, seed=params.seed)
    result["taus"] = dict(selection["taus"])
    result["selection"] = dict(selection)
    result["headline"] = headline(selection, result)
    result["counts"] = {
        "n_no_answer": int(evals["answer"].isna().sum()),
        "n_truncated": int((evals["finish_reason"] == "length").sum()) if "finish_reason" in evals else None,
    }
    return result, selections
