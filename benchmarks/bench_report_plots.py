"""Benchmark: what ``rerank_eval`` spends drawing its report's plots, on the last v1_rerank run.

Usage (after any v1_rerank run: it reads that run's eval split, learned energies and vote temperatures)::

    python benchmarks/bench_report_plots.py [--repeats 3]

Times, on the eval table the node scores (:func:`impetus.learned.fitting.score_split`): the
accuracy-vs-N curves of ``rerank_eval.curves`` and the oracle (:func:`impetus.selection.metrics.accuracy_vs_n`),
the energy histograms, and all of :func:`impetus.selection.plots.make_plots`. To time another
checkout's code on the same inputs: ``PYTHONPATH=<checkout>/src python benchmarks/bench_report_plots.py
--conf-source <checkout>/conf``. Run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--conf-source", default=None, help="another checkout's conf folder (its parameters)")
    args = parser.parse_args()
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    import impetus
    from impetus.energy.registry import energy_columns
    from impetus.learned.fitting import LearnedScorers, score_split
    from impetus.pipelines.utils import load_base_tokenizer
    from impetus.selection.methods import build_methods
    from impetus.selection.metrics import accuracy_vs_n
    from impetus.selection.plots import make_plots, plot_energy_histograms
    from impetus.selection.rules import oracle

    bootstrap_project(Path.cwd())
    with KedroSession.create(conf_source=args.conf_source) as session:
        context = session.load_context()
        load, params = context.catalog.load, context.params["rerank_eval"]
        scorers = LearnedScorers.from_records(load("text_ebm"), load("latent_ebm"), load("hybrid_energy"))
        evals, _ = score_split(load("graded_eval"), load("energies_eval"), load("hidden_eval"), load("problems_eval"),
                               load_base_tokenizer(load("base_lm")), scorers, {})
    taus = json.loads(Path("data/08_reporting/rerank_metrics.json").read_text())["taus"]
    cols = energy_columns(evals.columns)
    methods = build_methods(cols, taus)
    curves = [m for m in params.curves if m in methods]
    n_sub, seed = params.acc_vs_n_subsamples, params.seed
    sides = {
        "accuracy-vs-N curves": lambda: [accuracy_vs_n(evals, f, n_subsamples=n_sub, seed=seed)
                                         for f in [methods[m] for m in curves] + [oracle]],
        "energy histograms": lambda: plot_energy_histograms(evals, cols),
        "make_plots": lambda: make_plots(evals, methods, curves, cols, n_sub, seed),
    }
    seconds: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(args.repeats):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - t0)
    print(f"impetus from {Path(impetus.__file__).parent}; {evals['problem_id'].nunique()} problems, "
          f"{len(evals)} candidates, {len(cols)} energies, curves: {curves} + oracle")
    for name, s in seconds.items():
        print(f"{name:>22}: " + ", ".join(f"{x:.2f}" for x in s) + " s")


if __name__ == "__main__":
    main()
