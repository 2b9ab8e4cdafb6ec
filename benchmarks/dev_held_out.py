"""How much the learned energies flatter the dev split when it is scored in sample.

The learned energies measured on eval are refit on every train-side problem, dev included, so
their seed members have seen dev. V2, EBD and the compute-matched choice pick settings on dev,
so they score it with the ensembles' fold members that held each problem out
(:func:`impetus.learned.fitting.dev_held_out`). This prints, for a finished ``v1_rerank`` run,
each learned energy's top-1 accuracy on dev both ways and their correlation.

Usage (the run's own runtime parameters, as given to ``kedro run --params``)::

    python benchmarks/dev_held_out.py [key=value ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from impetus.framework.replicate import parse_params, runtime_params
from impetus.learned.ensemble import top1_accuracy
from impetus.learned.fitting import LearnedScorers, score_split
from impetus.pipelines.utils import load_base_tokenizer


def main(argv: list[str]) -> None:
    params = runtime_params(parse_params(",".join(argv)))  # a clear error for an item without '='
    bootstrap_project(Path.cwd())
    with KedroSession.create(runtime_params=params) as session:
        catalog = session.load_context().catalog
        scorers = LearnedScorers.from_records(*(catalog.load(n) for n in ("text_ebm", "latent_ebm", "hybrid_energy")))
        split = [catalog.load(n) for n in ("graded_dev", "energies_dev", "hidden_dev", "problems_dev")]
        tok = load_base_tokenizer(catalog.load("base_lm"))
    in_sample = score_split(*split, tok, scorers)[0]
    held_out = score_split(*split, tok, scorers, held_out=True)[0]
    folds = [t for t in scorers.text_ebm.trained_on if t]
    mixed = set(in_sample["problem_id"].astype(str)) & frozenset().union(*folds)
    print(f"{in_sample['problem_id'].nunique()} dev problems, {len(mixed)} of them in the learned energies' "
          "training groups (the others have only right or only wrong candidates)")
    for col in ("text_ebm", "latent_ebm", "hybrid"):
        acc = [100 * top1_accuracy(d[col].to_numpy(), d) for d in (in_sample, held_out)]
        r = np.corrcoef(in_sample[col], held_out[col])[0, 1]
        print(f"{col:>10}: dev top-1 {acc[0]:.1f}% in sample, {acc[1]:.1f}% held out (r {r:.3f})")


if __name__ == "__main__":
    main(sys.argv[1:])
