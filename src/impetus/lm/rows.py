"""One decoding row of the HF sampler (a prompt's sample) and how it is finished.

Kept apart from :mod:`impetus.lm.hf_sampler`'s batching loop: a row's tokens, recorded values and
stop-string bookkeeping, frozen into a :class:`~impetus.lm.sampler.Generation` when it ends (EOS, a
stop string, its token cap), and its stored record (:func:`impetus.lm.recording.finalize`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from impetus.energy.recorded import token_span
from impetus.lm.kv_cache import RowPast
from impetus.lm.recording import RowRecord, char_ends, finalize
from impetus.lm.sampler import Generation, kept_before

AnswerSpan = Callable[[int, str], "tuple[int, int] | None"]


@dataclass
class CallOptions:
    """The options of one decoding call of the HF backend (``generate``, ``continue_rows``, Power-SMC's
    particle loop), passed down to ``HFSampler.prefill`` and the loops (never kept on the sampler)."""

    record: bool
    past: list[RowPast] | None = None  # given caches of the prompts' first tokens
    keep_past: bool = False  # give each row its cache
    keep_states: bool = False  # keep each row's per-token states in its record
    forced: list[list[int]] | None = None  # per prompt: tokens its row emits first, recorded as if sampled
    ban: list[int | None] | None = None  # per prompt: a token its row's first step must not pick
    state: Callable[[], torch.Tensor | None] = lambda: None  # the last forward's last-layer states
    layer_state: Callable[[], dict[int, torch.Tensor]] = dict  # and its states at model.hidden_layers
    # The token prefix every prompt of the call shares, kept once (impetus.lm.shared_prefix): its
    # batch-1 cache and length; rows' caches then hold only their own tokens.
    prefix: Any = None
    prefix_len: int = 0


@dataclass
class Row:
    """Mutable state of one (prompt, sample) row."""

    prompt_idx: int
    sample_idx: int
    gen: torch.Generator
    ids: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    seconds: float = 0.0
    checked: int = 0  # length of decoded text already searched for stop strings
    ends: list[int] = field(default_factory=list)  # decoded length after each token (stop checks)
    result: Generation | None = None
    rec: RowRecord | None = None  # raw-logit statistics and states, when recording
    cap: int = 0  # max new tokens of this row
    past: RowPast | None = None  # its KV cache when it finished (``keep_past``)
    forced: list[int] = field(default_factory=list)  # tokens still to emit before sampling (``forced=``)
    ban: int | None = None  # a token its first step must not pick (``ban=``)



def pooled_record(tok: Any, r: Row, answer_span: AnswerSpan | None, keep_states: bool) -> dict:
    """The row's stored arrays (:func:`impetus.lm.recording.finalize`)."""
    n = r.result.n_tokens
    ends = r.ends[:n] if len(r.ends) >= n else char_ends(tok, r.result.token_ids)
    chars = answer_span(r.prompt_idx, r.result.text) if answer_span is not None and ends else None
    out = finalize(r.rec, r.result.n_tokens, token_span(ends, chars), keep_states=keep_states)
    out["char_ends"] = np.asarray(ends, np.int32)  # maps answer char spans to tokens later
    return out


def advance(tok: Any, r: Row, t: int, lp: float, st: list[float] | None, eos_ids: set[int], stops: list[str],
            max_stop: int) -> str | None:
    """Row ``r`` takes its sampled token ``t`` (log-prob ``lp``; ``st``: the step's recorded statistics,
    :func:`impetus.lm.recording.step_stats`, or None): how it ended (``"eos"``, ``"stop"``,
    ``"length"``, frozen by :func:`finish_row`), or None while it goes on."""
    if st is not None:
        r.rec.lse.append(st[0])
        r.rec.lse_temp.append(st[3])
    if t in eos_ids:
        finish_row(tok, r, "eos", None)
        return "eos"
    r.ids.append(t)
    r.logps.append(lp)
    if st is not None:
        r.rec.tok_logit.append(st[1])
        r.rec.deepconf.append(st[2])
    if max_stop and check_stop(tok, r, stops, max_stop):
        return "stop"
    if len(r.ids) < r.cap:
        return None
    finish_row(tok, r, "length", None)
    return "length"


def check_stop(tok: Any, r: Row, stops: list[str], max_stop: int) -> bool:
    """Finish ``r`` if its decoded text now contains a stop string; only new text is searched."""
    text = tok.decode(r.ids, skip_special_tokens=False)
    r.ends.append(len(text))  # the recording's token -> character map, for free
    start = max(0, r.checked - max_stop + 1)
    hits = [p for p in (text.find(s, start) for s in stops) if p >= 0]
    r.checked = len(text)
    if not hits:
        return False
    finish_row(tok, r, "stop", min(hits), text)
    return True


def finish_row(tok: Any, r: Row, reason: str, cut: int | None, text: str | None = None) -> None:
    """Freeze row ``r`` into a ``Generation`` (cutting at char ``cut`` for stop strings)."""
    if cut is not None:
        m = kept_before(tok, r.ids, cut)
        r.ids, r.logps = r.ids[:m], r.logps[:m]
        text = text[:cut]
    else:
        text = tok.decode(r.ids, skip_special_tokens=False)
    mean = sum(r.logps) / len(r.logps) if r.logps else math.nan
    r.result = Generation(
        text=text,
        token_ids=list(r.ids),
        n_tokens=len(r.ids),
        finish_reason=reason,  # type: ignore[arg-type]
        logprob_mean=float(mean),
        seconds=r.seconds,
        sample_idx=r.sample_idx,
    )


def first_bans(rows: list[Row], device: Any) -> torch.Tensor | None:
    """``[B]`` banned token of each row at this step (−1: none): only a row's first step (no token
    yet) has one."""
    bans = [r.ban if r.ban is not None and not r.ids else -1 for r in rows]
    return torch.tensor(bans, device=device) if any(b >= 0 for b in bans) else None
