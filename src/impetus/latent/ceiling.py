"""V2's ceiling: what any single-token edit where V2 edits could reach, and what its energy picks (issue 27).

V2 changes an answer only through the tokens its window decodes to (:mod:`impetus.latent.optimize`):
the answer's tokens before the window are kept, the window is re-decoded from the (moved) latents
and the rest is regenerated greedily. So before tuning how the latents move, enumerate where they
could lead. For each answer, at every position ``q`` of V2's window and at the answer span's first
token, each of the ``k`` tokens the model ranks highest there is forced after the kept prefix
``ids[:q]`` and the rest decoded greedily; every such alternative is scored with V2's energy.

- **Oracle headroom**: among answers whose zero-step control is wrong, the share where some
  alternative is right. No single-token edit at these positions can do better.
- **Energy argmin**: the lowest-energy answer among the start answer, the control and every
  alternative (what V2 could return: it keeps the lowest energy it visits), against the control.
  This is what V2's energy can reach among those edits, however well the latents are optimised.

The model is reached through :class:`impetus.lm.sampler.LatentSampler` only, with V2's own
regeneration (:meth:`impetus.latent.optimize.LatentOptimizer.regenerate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from impetus.latent.optimize import LatentOptimizer, _Job, trace_states
from impetus.lm.sampler import kept_before
from impetus.lm.trace import Trace
from impetus.selection.metrics import paired_bootstrap


@dataclass(frozen=True)
class Edit:
    """One alternative: token ``token`` (rank ``rank`` there) forced at answer position ``q`` of answer ``owner``."""

    owner: int
    q: int
    kind: str  # "window" (a position V2 edits) or "answer" (the answer span's first token)
    rank: int
    token: int


def answer_token(tok: Any, ids: list[int], answer_start: int | None) -> int | None:
    """Index of the token holding the answer span's first character (None: no answer found)."""
    if answer_start is None or not ids:
        return None
    q = kept_before(tok, ids, int(answer_start))  # tokens wholly before the answer
    return q if q < len(ids) else None


def edit_positions(window: tuple[int, int], answer_q: int | None, n_tokens: int) -> list[tuple[int, str]]:
    """``(q, kind)`` for each position V2's window ``(p, w)`` covers, then the answer's first token
    when it lies outside the window."""
    p, w = window
    out = [(q, "window") for q in range(p, min(p + w, n_tokens))]
    if answer_q is not None and not p <= answer_q < p + w:
        out.append((answer_q, "answer"))
    return out


def enumerate_edits(opt: LatentOptimizer, starts: list[Trace], prompts: list[list[int]],
                    positions: Sequence[Sequence[tuple[int, str]]], k: int) -> tuple[list[Edit], list[Trace]]:
    """Every top-``k`` single-token edit of every start answer and its greedy continuation, in one
    batched regeneration (``positions[i]``: answer ``i``'s ``(q, kind)``)."""
    edits: list[Edit] = []
    for i, (tr, pos) in enumerate(zip(starts, positions)):
        if not pos:
            continue
        with torch.no_grad():
            logits = opt.sampler.state_logits(trace_states(tr))  # row q predicts answer token q
        for q, kind in pos:
            top = torch.topk(logits[q].float(), k).indices.tolist()
            edits += [Edit(i, q, kind, r, int(v)) for r, v in enumerate(top)]
    jobs = [_Job(prompt=list(prompts[e.owner]), start=starts[e.owner], seed=0, p=e.q, w=1) for e in edits]
    return edits, (opt.regenerate(jobs, [[e.token] for e in edits]) if jobs else [])


def ceiling_table(edits: list[Edit], traces: list[Trace], energies: np.ndarray, correct: Sequence[bool]) -> pd.DataFrame:
    """One row per alternative: owner, q, kind, rank, token, n_tokens, energy, correct."""
    return pd.DataFrame({"owner": [e.owner for e in edits], "q": [e.q for e in edits], "kind": [e.kind for e in edits],
                         "rank": [e.rank for e in edits], "token": [e.token for e in edits],
                         "n_tokens": [len(t.ids) for t in traces], "energy": np.asarray(energies, float),
                         "correct": np.asarray(correct, bool)})


def summarize_ceiling(alts: pd.DataFrame, base: pd.DataFrame, n_boot: int, seed: int) -> dict[str, Any]:
    """Headroom and energy-argmin against the control. ``base``: one row per answer (index = owner)
    with ``start_energy``, ``start_correct``, ``control_energy``, ``control_correct``."""
    any_right = alts.groupby("owner")["correct"].any().reindex(base.index, fill_value=False).astype(bool)
    wrong = ~base["control_correct"].astype(bool)
    # the lowest energy among start, control and the alternatives (ties: start, then control, then rank order)
    pool = pd.concat([
        pd.DataFrame({"owner": base.index, "energy": base["start_energy"], "correct": base["start_correct"], "o": 0}),
        pd.DataFrame({"owner": base.index, "energy": base["control_energy"], "correct": base["control_correct"], "o": 1}),
        alts[["owner", "energy", "correct"]].assign(o=2),
    ], ignore_index=True).sort_values(["owner", "energy", "o"], kind="mergesort")
    argmin = pool.groupby("owner").head(1).set_index("owner")["correct"].reindex(base.index).astype(float)
    control = base["control_correct"].astype(float)
    pb = paired_bootstrap(argmin.to_numpy(), control.to_numpy(), n_boot=n_boot, seed=seed)
    n_wrong = max(int(wrong.sum()), 1)
    by_kind = {str(kind): float((g.groupby("owner")["correct"].any().reindex(base.index, fill_value=False).astype(bool)
                                 & wrong).sum() / n_wrong) for kind, g in alts.groupby("kind")}
    return {
        "n_answers": int(len(base)), "alternatives": int(len(alts)), "control_accuracy": float(control.mean()),
        "start_accuracy": float(base["start_correct"].astype(float).mean()), "control_wrong": int(wrong.sum()),
        "oracle_headroom": float((any_right & wrong).sum() / n_wrong),
        "oracle_accuracy": float((any_right | ~wrong).mean()), "oracle_headroom_by_kind": by_kind,
        "argmin_accuracy": float(argmin.mean()),
        "argmin_minus_control": float(pb["mean_diff"]), "argmin_minus_control_ci": [float(pb["lo"]), float(pb["hi"])],
    }


def v2_ceiling(opt: LatentOptimizer, tok: Any, split: Any, pids: list[str], energy: str, k: int, n_boot: int,
               seed: int) -> tuple[dict[str, Any], pd.DataFrame]:
    """The ceiling of V2 started from each of ``pids``' first candidate (``split``: a
    :class:`impetus.latent.evaluate.Split`), with ``opt``'s positions rule and ``energy``.

    V2 with zero steps gives each answer's window, start and control (energies and answers); then
    every top-``k`` edit is regenerated, scored and graded. Returns the summary and the
    alternatives' table (with ``problem_id`` and ``text``)."""
    first = split.candidates[split.candidates["sample_idx"] == 0].set_index("problem_id")
    prompt_of = dict(zip(split.prompts["problem_id"], split.prompts["prompt"]))
    items = [(tok(prompt_of[p])["input_ids"], tok(first.loc[p, "completion"], add_special_tokens=False)["input_ids"])
             for p in pids]

    def energy_of(owners: list[int], traces: list[Trace]) -> np.ndarray:
        return split.score([pids[o] for o in owners], traces)[energy].to_numpy(float) if traces else np.zeros(0)

    starts = opt.encode(items)  # V2's own encodings when it shares them (opt.reuse)
    zero = LatentOptimizer(opt.sampler, tok, opt.params, replace(opt.cfg, mode="reinforce", steps=0), opt.reuse)
    results = zero.optimize_many(items, energy_of, [0] * len(items), starts=starts)
    span = first["answer_start"] if "answer_start" in first.columns else pd.Series(None, index=first.index, dtype=object)
    answer_q = [answer_token(tok, ids, _start(span.loc[p])) for p, (_, ids) in zip(pids, items)]
    positions = [edit_positions(r.window, q, len(ids)) for r, q, (_, ids) in zip(results, answer_q, items)]
    edits, traces = enumerate_edits(opt, starts, [p for p, _ in items], positions, k)
    owners = [e.owner for e in edits]
    texts = [tok.decode(t.ids, skip_special_tokens=False) for t in traces]
    right = [bool(split.grade(pids[o], text)[1]) for o, text in zip(owners, texts)]
    alts = ceiling_table(edits, traces, energy_of(owners, traces), right)
    base = pd.DataFrame({
        "start_energy": [r.start_energy for r in results], "control_energy": [r.control_energy for r in results],
        "start_correct": [bool(first.loc[p, "correct"]) for p in pids],
        "control_correct": [bool(split.grade(p, r.control_text)[1]) for p, r in zip(pids, results)],
    })
    return summarize_ceiling(alts, base, n_boot, seed), alts.assign(problem_id=[pids[o] for o in owners], text=texts)


def _start(value: Any) -> int | None:
    """A graded ``answer_start`` (nullable Int64) as an int, or None."""
    return None if value is None or pd.isna(value) else int(value)
