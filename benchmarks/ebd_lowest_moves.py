"""Where EBD's lowest-energy state leaves its best start, and whether the answer it moves to is right.

Runs the ``ebd`` pipeline as ``kedro run -p ebd --params <key=value ...>`` would (so it writes the
same outputs), keeping every chain's states, energies and grades on the way
(:func:`impetus.decoding.evaluate.answer_rows` is wrapped; nothing else changes). It then prints,
over the eval problems EBD ran:

- how often the best start is right (the lower-energy of the chains' starts: best-of-``chains·n_init``
  by the energy) and how often the lowest state visited is right (``ebd_lowest``);
- the problems where the lowest state differs from the best start, by the moves right → wrong,
  wrong → right and wrong → wrong, and whether the new answer is one the problem's V1 candidates gave;
- the energy drop from the best start to the lowest state, and each such pair's texts.

A diagnosis, not a method: it chooses nothing. Usage, after ``make run``::

    python benchmarks/ebd_lowest_moves.py [key=value ...]     # e.g. ebd.n_problems=100
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

import impetus.decoding.evaluate as ebd_evaluate
from impetus.framework.replicate import parse_params, runtime_params

#: per problem: (chain, step, energy, text, (answer, correct)) of every state its chains visited
Visited = list[tuple[int, int, float, str, tuple[Any, bool]]]


def run_and_keep(params: dict[str, Any]) -> tuple[dict[str, Visited], pd.Series]:
    """Run the ``ebd`` pipeline with ``params``; return the eval chains' states (dev grid runs, when a
    grid is set, are left out: their problems are not eval's) and each eval problem's set of V1 answers."""
    kept: dict[str, Visited] = {}
    original = ebd_evaluate.answer_rows

    def keeping(pids, chains_of, base_tokens_of, steps, decode, grade, seconds, stepless=False):
        for pid, chains in zip(pids, chains_of):
            kept[pid] = [(c, s, e, text, grade(pid, text))
                         for c, (states, energies) in enumerate(zip(chains.states, chains.energies))
                         for s, (ids, e) in enumerate(zip(states, energies)) for text in [decode(ids)]]
        return original(pids, chains_of, base_tokens_of, steps, decode, grade, seconds, stepless)

    ebd_evaluate.answer_rows = keeping
    try:
        bootstrap_project(Path.cwd())
        with KedroSession.create(runtime_params=params) as session:
            session.run(pipeline_names=["ebd"])
            graded = session.load_context().catalog.load("graded_eval")
    finally:
        ebd_evaluate.answer_rows = original
    pools = graded.groupby("problem_id")["answer"].apply(lambda s: set(map(str, s)))
    return {pid: rows for pid, rows in kept.items() if pid in pools.index}, pools


def summarise(kept: dict[str, Visited], pools: pd.Series) -> None:
    """Print the counts, the energy drops and the moved pairs (module docstring)."""
    moves: list[tuple[str, tuple, tuple]] = []
    start_right = lowest_right = 0
    for pid, rows in kept.items():
        best = min((r for r in rows if r[1] == 0), key=lambda r: r[2])
        lowest = min(rows, key=lambda r: r[2])
        start_right += bool(best[4][1])
        lowest_right += bool(lowest[4][1])
        if lowest[3] != best[3]:
            moves.append((pid, best, lowest))
    kind = pd.Series([f"{'right' if b[4][1] else 'wrong'} -> {'right' if low[4][1] else 'wrong'}"
                      for _, b, low in moves], dtype=str)
    in_pool = [str(low[4][0]) in pools[pid] for pid, _, low in moves]
    drops = np.array([b[2] - low[2] for _, b, low in moves])
    starts = np.array([r[2] for rows in kept.values() for r in rows if r[1] == 0])
    print(f"{len(kept)} problems: best start right {start_right}, lowest state visited right {lowest_right}")
    print(f"lowest state differs from the best start on {len(moves)}: {kind.value_counts().to_dict()}; "
          f"its answer among the problem's V1 candidates' answers {sum(in_pool)}, new {len(moves) - sum(in_pool)}")
    if len(moves):
        print(f"energy drop best start -> lowest: median {np.median(drops):.3f} (range {drops.min():.3f} to "
              f"{drops.max():.3f}); the starts' energies: standard deviation {starts.std():.3f}")
    for (pid, b, low), pooled in zip(moves, in_pool):
        print(f"{pid}: {b[3]!r} ({b[2]:+.3f}, {'right' if b[4][1] else 'wrong'}) -> {low[3]!r} "
              f"({low[2]:+.3f}, {'right' if low[4][1] else 'wrong'}, {'in the V1 pool' if pooled else 'new'})")


def main(argv: list[str]) -> None:
    params = runtime_params(parse_params(",".join(argv)))  # a clear error for an item without '='
    summarise(*run_and_keep(params))


if __name__ == "__main__":
    main(sys.argv[1:])
