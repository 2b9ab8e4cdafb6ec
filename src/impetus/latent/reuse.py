"""What one V2 run makes once and looks up afterwards: its start answers' encodings and its greedy
regenerations (Kedro-free).

V2 encodes each start answer with one teacher-forced pass (a continuable
:class:`impetus.lm.trace.Trace`), then regenerates answers from a cut of it: the kept tokens, a forced
window, then greedy decoding (:meth:`impetus.latent.optimize.LatentOptimizer.regenerate`). Both
depend only on token ids (the prompt, the answer or its kept tokens, the window, the token cap), so
a run's modes and its ceiling (:mod:`impetus.latent.ceiling`) share one :class:`Reuse`: what was made
is looked up, not made again. In bf16 the same row made in two batches of different composition can
round differently, and its energies move with it (docs/benchmarks.md, "bf16 energies also move with
the batch"); with one store, every use of a row sees the same values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from impetus.lm.sampler import Generation, LatentSampler, encode_items
from impetus.lm.trace import Trace

#: ``(prompt ids, kept answer ids, window, token cap, stop strings)`` of a greedy regeneration.
ContinuationKey = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int, tuple[str, ...]]
#: ``(prompt ids, answer ids)`` of an encoded start answer.
StartKey = tuple[tuple[int, ...], tuple[int, ...]]


@dataclass
class Reuse:
    """One V2 run's store: greedy continuations by key and encoded start answers by key."""

    continuations: dict[ContinuationKey, Generation] = field(default_factory=dict)
    starts: dict[StartKey, Trace] = field(default_factory=dict)


def encode_starts(sampler: LatentSampler, items: list[tuple[list[int], list[int]]],
                  reuse: Reuse | None = None) -> list[Trace]:
    """Continuable traces of the start answers ``(prompt ids, answer ids)``: teacher-forced passes
    (encode once, optimise in as many modes as wanted), the prompts together where the backend can
    (:func:`impetus.lm.sampler.encode_items`; else one pass per distinct prompt). Answers already in
    ``reuse.starts`` are looked up; the others are encoded and added."""
    known = {} if reuse is None else reuse.starts
    todo = [k for k, (prompt, answer) in enumerate(items) if (tuple(prompt), tuple(answer)) not in known]
    out: list[Any] = [None] * len(items)
    if todo:
        traces = encode_items(sampler, [items[k][0] for k in todo], [list(items[k][1]) for k in todo],
                              keep_past=bool(sampler.can_continue()))
        for k, tr in zip(todo, traces):
            out[k] = tr
            known.setdefault((tuple(items[k][0]), tuple(items[k][1])), tr)
    return [tr if tr is not None else known[(tuple(p), tuple(a))] for tr, (p, a) in zip(out, items)]
