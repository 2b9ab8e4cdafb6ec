"""How often cross-validation's pick is the best on eval, and what other selection rules would give
(issue 25's winner's-curse study).

With ~25 methods whose out-of-fold accuracies have standard errors of ~2 points, the top of the CV
table is often a tie, and the maximum of noisy estimates is biased upwards (the winner's curse).
This module replays, on finished runs' ``rerank_metrics.json``, rules that each choose on the
out-of-fold (train-side) table only:

- ``cv``: the best out-of-fold accuracy over the whole table (ties: more folds won, then cheaper;
  with a shortlist, its order before cost),
  the headline rule before issue 25;
- ``shortlist``: the same among a short list decided before seeing any eval number (the learned
  ensembles, majority or lm-eval's rules, one logit energy): ``rerank_eval.shortlist``, the
  default since it was adopted on the panel (docs/results.md);
- ``lcb``: the best lower confidence bound, out-of-fold accuracy minus ``z`` standard errors;
- ``shrink``: the best empirical-Bayes estimate, each method's accuracy shrunk towards the table's
  mean by ``tau^2 / (tau^2 + se^2)`` (``tau^2``: the between-method variance left after the noise).

Each rule's pick is then looked up on eval. Comparing the rules on eval numbers is itself a choice:
a winner adopted from this table must be confirmed on seeds the comparison never saw.

    python -m impetus.selection.winners_curse data/08_reporting/replication/*/seed_*/rerank_metrics.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from impetus.selection.crossval import choose_by_cv

__all__ = ["RULES", "pick", "replay", "summary", "markdown"]

#: The shortlist fixed in advance (those present in a run's table are used).
SHORTLIST = ("hybrid", "latent_ebm", "text_ebm", "vote_hybrid", "majority", "loglik", "loglik_norm", "spilled_max")
RULES = ("cv", "shortlist", "lcb", "shrink")


def _table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Out-of-fold accuracy and SE per method (no oracle), with its eval accuracy."""
    sel = metrics["selection"]["methods"]
    rows = [{"method": m, "oof": float(v["accuracy"]), "se": float(v.get("se") or 0.0),
             "eval": float(metrics["methods"][m]["accuracy"])}
            for m, v in sel.items() if m != "oracle" and m in metrics["methods"]]
    return pd.DataFrame(rows)


def _costs(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The tie-break costs the run's choice used (older runs did not record them: eval's, same order)."""
    sel = metrics["selection"]
    return sel.get("costs") or {m: float(v.get("seconds_per_problem") or 0.0) for m, v in metrics["methods"].items()}


def pick(metrics: Mapping[str, Any], rule: str, z: float = 1.0, shortlist: Sequence[str] = SHORTLIST) -> str:
    """The method ``rule`` chooses from the run's out-of-fold table (never from eval)."""
    if rule in ("cv", "shortlist"):  # the pipeline's own function, so a replay equals the run's choice
        summary = {m: v for m, v in metrics["selection"]["methods"].items() if m in metrics["methods"]}
        return choose_by_cv(summary, _costs(metrics), shortlist=shortlist if rule == "shortlist" else None)
    t = _table(metrics)
    if rule == "lcb":
        score = t["oof"] - z * t["se"]
    elif rule == "shrink":
        tau2 = max(float(t["oof"].var(ddof=1)) - float((t["se"] ** 2).mean()), 0.0)
        weight = tau2 / (tau2 + t["se"] ** 2).where(lambda s: s > 0, 1.0)
        score = t["oof"].mean() + weight * (t["oof"] - t["oof"].mean())
    else:
        raise ValueError(f"unknown rule {rule!r}; known: {RULES}")
    if t.empty:
        raise ValueError(f"rule {rule!r}: the run has no out-of-fold table")
    return str(t.loc[score.idxmax(), "method"])  # ties: the table's (registry) order


def replay(paths: Sequence[Path], rules: Sequence[str] = RULES) -> pd.DataFrame:
    """One row per (run, rule): the pick, its eval accuracy, the eval-best method's, and the regret."""
    rows = []
    for path in paths:
        metrics = json.loads(Path(path).read_text())
        t = _table(metrics)
        best = float(t["eval"].max())
        for rule in rules:
            chosen = pick(metrics, rule)
            acc = float(t.loc[t["method"] == chosen, "eval"].iloc[0])
            rows.append({"run": str(path), "rule": rule, "pick": chosen, "eval": acc, "eval_best": best,
                         "regret": best - acc, "is_best": acc >= best - 1e-12})
    return pd.DataFrame(rows)


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per rule: runs, how often its pick is (tied for) the best on eval, mean eval accuracy and regret."""
    g = rows.groupby("rule", sort=False)
    return pd.DataFrame({"runs": g.size(), "best_on_eval": g["is_best"].mean(), "mean_eval": g["eval"].mean(),
                         "mean_regret": g["regret"].mean(), "max_regret": g["regret"].max()})


def markdown(rows: pd.DataFrame) -> str:
    s = summary(rows)
    lines = ["| rule | runs | pick best on eval | mean eval acc % | mean regret (pts) | max regret (pts) |",
             "|---|---|---|---|---|---|"]
    for rule, r in s.iterrows():
        lines.append(f"| {rule} | {int(r.runs)} | {100 * r.best_on_eval:.0f}% | {100 * r.mean_eval:.1f} | "
                     f"{100 * r.mean_regret:.1f} | {100 * r.max_regret:.1f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", nargs="+", type=Path, help="rerank_metrics.json files (one per run)")
    args = parser.parse_args(argv)
    rows = replay(args.metrics)
    print(markdown(rows))
    print()
    print(rows.assign(run=[str(Path(r).parent) for r in rows["run"]]).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
