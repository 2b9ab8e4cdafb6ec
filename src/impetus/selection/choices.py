"""V1 on a multiple-choice problem's scored choices (``sampling.candidates: choices``), against the
baselines researchers quote.

lm-evaluation-harness scores a multiple-choice benchmark by the log-likelihood of each choice after
its prompt: ``acc`` picks the highest summed log-probability, ``acc_norm`` the highest per character
of the choice (here the energies ``neg_loglik`` and ``neg_loglik_per_char``, methods ``loglik`` and
``loglik_norm``). Every other energy, training-free or learned, is one more argmin over the same
choices. The rules of :mod:`impetus.selection.report` hold: the headline method is chosen by
cross-validation over the train-side problems (learned energies out of fold), and so is the
baseline it is compared with, the better of ``loglik`` and ``loglik_norm`` on those problems;
eval only measures. Beside accuracy, each energy's AUROC for "this choice is right", pooled and
within problem, is its use as a hallucination detector.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from impetus.selection.crossval import choose_by_cv, cv_summary
from impetus.selection.metrics import auroc, bootstrap_ci, paired_bootstrap, within_problem_auroc
from impetus.energy.registry import cost_keys
from impetus.selection.report import _fmt, cv_lines
from impetus.selection.rules import Selector, get_selector, oracle, selection_correct

#: lm-eval's two rules: method name -> energy column.
BASELINES: dict[str, str] = {"loglik": "neg_loglik", "loglik_norm": "neg_loglik_per_char"}
NOT_CHOSEN = ("oracle",)
LEFT_OUT = (
    "Left out on choices: majority and energy-weighted votes, adaptive N, one sample and accuracy against N "
    "(each choice is one candidate with an answer of its own, so a vote is a tie or the argmin, the first "
    "candidate is choice A, and there is no N to vary), and the consistency energies (agreement or "
    "similarity between different choices says nothing about which is right)."
)


def choice_methods(energy_cols: Sequence[str]) -> dict[str, Selector]:
    """The two lm-eval baselines, the argmin of every other energy column, and the oracle."""
    methods: dict[str, Selector] = {name: get_selector("argmin", energy_col=col)
                                    for name, col in BASELINES.items() if col in energy_cols}
    for col in energy_cols:
        if col not in BASELINES.values():
            methods[col] = get_selector("argmin", energy_col=col)
    methods["oracle"] = oracle
    return methods


def choice_costs(energy_cols: Sequence[str], stage_seconds: Mapping[str, float], hybrid_cols: Sequence[str],
                 n_problems: int) -> dict[str, float]:
    """Seconds per problem each method needs beyond scoring the choices (its energy's cost keys)."""
    out = {}
    for name in choice_methods(energy_cols):
        keys = set() if name in NOT_CHOSEN else cost_keys(BASELINES.get(name, name), hybrid_cols)
        out[name] = float(sum(stage_seconds.get(k, 0.0) for k in keys)) / max(n_problems, 1)
    return out


def _correct(df: pd.DataFrame, methods: Mapping[str, Selector]) -> pd.DataFrame:
    return pd.DataFrame({name: selection_correct(df, sel(df)) for name, sel in methods.items()})


def choice_selection(train_side: pd.DataFrame, fold_of: pd.Series, energy_cols: Sequence[str],
                     costs: Mapping[str, float], selected_on: str = "cv") -> dict[str, Any]:
    """The headline method and the baseline, both chosen on train-side problems.

    ``train_side``'s learned-energy columns are out of fold (cross-validation) or fit on other
    problems (``selected_on="dev"``, one fold); the other energies learn nothing, so their accuracy
    there is already held-out. Ties: more folds won, then cheaper, then name (:func:`choose_by_cv`, no shortlist here).
    """
    cols = [c for c in energy_cols if c in train_side.columns]
    methods = choice_methods(cols)
    summary = cv_summary(_correct(train_side, methods), fold_of, exclude=NOT_CHOSEN)
    baselines = [b for b in BASELINES if b in summary]
    if not baselines:
        raise ValueError("scored choices carry no log-likelihood energies (neg_loglik); rerun the energies stage")
    return {
        "selected_on": selected_on, "folds": int(fold_of.nunique()) if selected_on == "cv" else None,
        "n_problems": int(train_side["problem_id"].nunique()),
        "method": choose_by_cv(summary, costs, exclude=NOT_CHOSEN),
        "baseline": choose_by_cv({b: summary[b] for b in baselines}, {}, exclude=()),
        "methods": summary, "taus": {},
    }


def choice_evaluation(evals: pd.DataFrame, selection: Mapping[str, Any], energy_cols: Sequence[str],
                      stage_seconds: Mapping[str, float], hybrid_cols: Sequence[str], n_boot: int, seed: int,
                      ) -> tuple[dict[str, Any], pd.DataFrame]:
    """Every method once on the eval choices: accuracy with its CI, gain over the chosen baseline
    (paired bootstrap over problems), AUROC pooled and within problem, cost against scoring the choices."""
    cols = [c for c in energy_cols if c in evals.columns]
    methods = choice_methods(cols)
    problems = pd.Index(sorted(evals["problem_id"].unique()), name="problem_id")
    picks = {name: sel(evals) for name, sel in methods.items()}
    correct = {name: selection_correct(evals, p).reindex(problems).to_numpy(float) for name, p in picks.items()}
    base = correct[selection["baseline"]]
    scoring = float(evals.groupby("problem_id")["gen_seconds"].sum().mean())
    costs = choice_costs(cols, stage_seconds, hybrid_cols, len(problems))
    out: dict[str, Any] = {}
    for name, c in correct.items():
        diff = paired_bootstrap(c, base, n_boot=n_boot, seed=seed)
        col = None if name in NOT_CHOSEN else BASELINES.get(name, name)
        per_problem = costs[name]
        out[name] = {
            "accuracy": float(c.mean()), "ci": list(bootstrap_ci(c, n_boot=n_boot, seed=seed)),
            "gain_vs_baseline": diff["mean_diff"], "gain_vs_baseline_ci": [diff["lo"], diff["hi"]],
            "gain_vs_baseline_p": diff["p_value"],
            "auroc": auroc(evals["correct"], evals[col]) if col else None,
            "auroc_within": within_problem_auroc(evals, col) if col else None,
            "seconds_per_problem": per_problem, "cost_ratio_vs_sampling": per_problem / scoring if scoring else None,
        }
    result = {
        "candidates": "choices", "methods": out, "baseline": selection["baseline"],
        "baselines": {b: out[b]["accuracy"] for b in BASELINES if b in out}, "oracle": out["oracle"]["accuracy"],
        "n_problems": int(len(problems)), "n_candidates": int(evals.groupby("problem_id").size().max()),
        "n_rows": int(len(evals)), "chance": float((1.0 / evals.groupby("problem_id").size()).mean()),
        "sampling_seconds_per_problem": scoring, "selection": dict(selection), "taus": {}, "left_out": LEFT_OUT,
    }
    result["headline"] = _headline(selection, result)
    table = pd.DataFrame(picks)
    table.index.name = "problem_id"
    return result, table.reset_index()


def _headline(selection: Mapping[str, Any], result: Mapping[str, Any]) -> dict[str, Any]:
    name, methods = selection["method"], result["methods"]
    m, chosen = methods[name], selection["methods"][name]
    return {
        "method": name, "selected_on": selection["selected_on"], "folds": selection["folds"],
        "n_problems": selection["n_problems"], "selection_accuracy": chosen["accuracy"], "selection_se": chosen["se"],
        "accuracy": m["accuracy"], "ci": m["ci"], "baseline": result["baseline"],
        "baseline_accuracy": methods[result["baseline"]]["accuracy"], "gain_vs_baseline": m["gain_vs_baseline"],
        "gain_vs_baseline_ci": m["gain_vs_baseline_ci"], "cost_ratio_vs_sampling": m["cost_ratio_vs_sampling"],
        "post_hoc_best_on_eval": max((n for n in methods if n not in NOT_CHOSEN), key=lambda n: methods[n]["accuracy"]),
    }


def choice_summary(result: Mapping[str, Any]) -> str:
    """One paragraph: the chosen method and baseline, the eval accuracies and the gain with its CI."""
    h, b = result["headline"], result["baselines"]
    lo, hi = h["ci"]
    glo, ghi = h["gain_vs_baseline_ci"]
    how = (f"{h['folds']}-fold cross-validation over {h['n_problems']} train-side problems"
           if h["selected_on"] == "cv" else f"the dev split ({h['n_problems']} problems)")
    cost = h["cost_ratio_vs_sampling"]
    return (
        f"**Chosen by {how}: `{h['method']}`** ({_fmt(h['selection_accuracy'])}% ± {_fmt(h['selection_se'])} SE there). "
        f"On {result['n_problems']} eval problems it picks the right choice on {_fmt(h['accuracy'])}% "
        f"[{_fmt(lo)}, {_fmt(hi)}] against `{h['baseline']}` {_fmt(h['baseline_accuracy'])}%, the better "
        f"lm-evaluation-harness rule on the same train-side problems ({100 * h['gain_vs_baseline']:+.1f} points "
        f"[{100 * glo:+.1f}, {100 * ghi:+.1f}]). lm-eval's acc (`loglik`) {_fmt(b.get('loglik'))}%, acc_norm "
        f"(`loglik_norm`) {_fmt(b.get('loglik_norm'))}%; chance {_fmt(result['chance'])}%. Its scoring costs "
        f"{'–' if cost is None else f'{100 * cost:.1f}%'} of the time spent scoring the choices."
    )


def choice_report(result: Mapping[str, Any], title: str = "V1 reranking on scored choices") -> str:
    """Summary, every method on eval (post hoc) with its AUROCs, the selection table, what is left out."""
    selection = result["selection"]
    lines = [
        f"## {title}", "", choice_summary(result), "",
        f"Every method on eval (**post hoc**: the headline was chosen {'out of fold' if selection['selected_on'] == 'cv' else 'on dev'}). "
        f"Scoring the choices: {result['sampling_seconds_per_problem']:.3f} s/problem, {result['n_candidates']} choices at most.", "",
        f"| method | {selection['selected_on']} acc % | acc % | 95% CI | vs `{result['baseline']}` (pts) [95% CI] "
        "| AUROC | AUROC within | s/problem | cost / scoring |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for name, m in sorted(result["methods"].items(), key=lambda kv: -kv[1]["accuracy"]):
        mark = " ◀ headline" if name == result["headline"]["method"] else (" ◀ baseline" if name == result["baseline"] else "")
        glo, ghi = m["gain_vs_baseline_ci"]
        ratio = m["cost_ratio_vs_sampling"]
        lines.append(
            f"| {name}{mark} | {_fmt((selection['methods'].get(name) or {}).get('accuracy'))} | {_fmt(m['accuracy'])} | "
            f"[{_fmt(m['ci'][0])}, {_fmt(m['ci'][1])}] | {100 * m['gain_vs_baseline']:+.1f} [{100 * glo:+.1f}, {100 * ghi:+.1f}] | "
            f"{_fmt(m['auroc'], pct=False)} | {_fmt(m['auroc_within'], pct=False)} | {m['seconds_per_problem']:.4f} | "
            f"{'–' if ratio is None else f'{100 * ratio:.2f}%'} |")
    lines += cv_lines(selection, fit="learned energies") + latent_features_lines(result.get("latent_features"))
    lines += ["", "AUROC: the energy as a detector of right vs wrong choices (hallucination detection), pooled over "
              "problems; within: inside each problem, averaged (what a reranker can use).", "", result["left_out"]]
    return "\n".join(lines) + "\n"


def latent_features_lines(features: Mapping[str, Any] | None) -> list[str]:
    """Which states the final LatentEBM reads, and, when cross-validation chose them
    (``hidden_source: cv``), every candidate's out-of-fold score on the train-side problems."""
    if not features:
        return []
    lines = ["", f"The LatentEBM reads `{features['source']}`."]
    if features.get("cv"):
        lines[-1] += (" Chosen by cross-validation on the train-side problems (final fit), the candidates' "
                      "within-problem AUROC and top-1 accuracy out of fold:")
        lines += ["", "| states | AUROC within | top-1 % |", "|---|---:|---:|"]
        lines += [f"| {s}{' ◀' if s == features['source'] else ''} | {_fmt(v['auroc'], pct=False)} | {_fmt(v['top1'])} |"
                  for s, v in features["cv"].items()]
    return lines


def choice_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The headline and baselines as flat MLflow metrics (per-method ones: ``method_metrics``)."""
    h = result["headline"]
    flat = {"headline/accuracy": h["accuracy"], "headline/ci_lo": h["ci"][0], "headline/ci_hi": h["ci"][1],
            "headline/gain_vs_baseline": h["gain_vs_baseline"], "headline/gain_vs_baseline_lo": h["gain_vs_baseline_ci"][0],
            "headline/gain_vs_baseline_hi": h["gain_vs_baseline_ci"][1], "rerank/oracle": result["oracle"],
            "rerank/chance": result["chance"], "rerank/n_problems": result["n_problems"]}
    flat |= latent_features_metrics(result.get("latent_features"))
    return flat | {f"rerank/baseline/{k}": v for k, v in result["baselines"].items()}


def latent_features_metrics(features: Mapping[str, Any] | None) -> dict[str, float]:
    """Each candidate state set's out-of-fold scores as flat MLflow metrics (``latent_features/<source>/<key>``)."""
    cv = (features or {}).get("cv") or {}
    return {f"latent_features/{s}/{k}": v for s, row in cv.items() for k, v in row.items()}
