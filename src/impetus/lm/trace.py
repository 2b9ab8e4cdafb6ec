"""Complete answers that can be continued and scored without another forward pass (EBD states).

A :class:`Trace` is an answer after a prompt together with what the model computed for it: the
per-token raw-logit statistics of :mod:`impetus.lm.recording`, every token's last-layer state and
the KV cache of prompt + answer. Energy-based decoding keeps one per chain: a proposal that keeps
the first ``t`` tokens continues from the cache cropped to them (the prompt and the kept prefix are
never re-encoded, :meth:`impetus.lm.sampler.ContinuingSampler.continue_rows` ``past=``), and its
energies come from the kept prefix's recorded values spliced with the new tokens' (no teacher-forced
pass). Only chain starts that the sampler did not produce are encoded once
(:meth:`impetus.lm.sampler.ContinuingSampler.encode_answers`). Backend-neutral: the cache is opaque.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from impetus.energy.recorded import energy_table, layer_key, recorded_row
from impetus.lm.recording import char_ends, pool_states
from impetus.lm.sampler import Generation, kept_before


@dataclass
class Trace:
    """One answer of ``T`` tokens: ``lse`` (T + 1), ``tok_logit``, ``deepconf`` (T), ``states``
    (``[T, H]``), the last prompt token's state, and ``past``: the KV cache of the prompt and at
    least the answer's first ``T - 1`` tokens (None when the model's cache cannot be continued)."""

    ids: list[int]
    lse: np.ndarray
    tok_logit: np.ndarray
    deepconf: np.ndarray
    states: np.ndarray
    prompt_state: np.ndarray
    past: Any = None  # the backend's opaque cache (``ContinuingSampler``)
    lse_temp: np.ndarray | None = None  # T + 1: logsumexp(logits / sampling temperature) (power-target EBD)
    # Further layers (``model.hidden_layers``): per layer k, ``[T, H]`` states and the last prompt token's
    layer_states: dict[int, np.ndarray] = field(default_factory=dict)
    prompt_layer_states: dict[int, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def truncate(self, m: int) -> Trace:
        """The first ``m`` tokens (``lse`` keeps the step after them; the cache may stay longer)."""
        return replace(self, ids=self.ids[:m], lse=self.lse[: m + 1], tok_logit=self.tok_logit[:m],
                       deepconf=self.deepconf[:m], states=self.states[:m],
                       lse_temp=None if self.lse_temp is None else self.lse_temp[: m + 1],
                       layer_states={k: v[:m] for k, v in self.layer_states.items()})


def continued(prefix: Trace, t: int, gen: Generation) -> Trace:
    """``prefix``'s first ``t`` tokens followed by ``gen``, continued after them
    (``ContinuingSampler.continue_rows``): the prefix's recorded values spliced with the continuation's."""
    rec = gen.record
    if rec is None or "states" not in rec:
        raise ValueError("the continuation was sampled without recording its states (use continue_rows)")
    return Trace(ids=prefix.ids[:t] + list(gen.token_ids), lse=np.concatenate([prefix.lse[:t], rec["lse"]]),
                 tok_logit=np.concatenate([prefix.tok_logit[:t], rec["tok_logit"]]),
                 deepconf=np.concatenate([prefix.deepconf[:t], rec["deepconf"]]),
                 states=np.concatenate([prefix.states[:t], rec["states"]]), prompt_state=prefix.prompt_state,
                 past=gen.past, lse_temp=(np.concatenate([prefix.lse_temp[:t], rec["lse_temp"]])
                                          if prefix.lse_temp is not None and "lse_temp" in rec else None),
                 layer_states=_spliced_layers(prefix, t, rec), prompt_layer_states=prefix.prompt_layer_states)


def generated_trace(gen: Generation) -> Trace:
    """The trace of a whole answer sampled after its prompt with its states kept (a particle of
    :meth:`impetus.lm.sampler.ParticleSampler.sample_particles`); no cache."""
    rec = gen.record
    if rec is None or "prompt_state" not in rec:
        raise ValueError("the answer was sampled without recording its states (use sample_particles)")
    layers = {int(k[len("prompt_states_l"):]): v for k, v in rec.items() if k.startswith("prompt_states_l")}
    empty = Trace(ids=[], lse=np.zeros(0, np.float32), tok_logit=np.zeros(0, np.float32),
                  deepconf=np.zeros(0, np.float32), states=np.zeros((0, len(rec["prompt_state"])), np.float32),
                  prompt_state=rec["prompt_state"], lse_temp=np.zeros(0, np.float32),
                  layer_states={k: np.zeros((0, len(v)), np.float32) for k, v in layers.items()},
                  prompt_layer_states=layers)
    return replace(continued(empty, 0, gen), past=None)


def _spliced_layers(prefix: Trace, t: int, rec: dict[str, Any]) -> dict[int, np.ndarray]:
    """Each recorded further layer's states: the prefix's first ``t`` and the continuation's (a layer
    the prefix lacks is kept only when nothing of the prefix is)."""
    out = {}
    for key, states in rec.items():
        if not key.startswith("states_l"):
            continue
        k = int(key[len("states_l"):])
        if k in prefix.layer_states:
            out[k] = np.concatenate([prefix.layer_states[k][:t], states])
        elif t == 0:
            out[k] = np.asarray(states)
    return out


def cut_at_stop(trace: Trace, tokenizer: Any, stops: list[str]) -> Trace:
    """End ``trace`` before its first stop string, as the sampler would have: a continuation only
    checks its own new text, so a stop string straddling the kept prefix and the new tokens is
    found here."""
    text = tokenizer.decode(trace.ids, skip_special_tokens=False)
    hits = [p for p in (text.find(s) for s in stops) if p >= 0]
    return trace.truncate(kept_before(tokenizer, trace.ids, min(hits))) if hits else trace


def trace_energies(tokenizer: Any, traces: list[Trace], char_spans: list[tuple[int, int] | None]
                   ) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Logit energies (and flags) and pooled hidden states of traces, from their recorded values:
    the same numbers :func:`impetus.lm.scoring.score_candidates` computes with a forward pass."""
    rows, mean, ans = [], [], []
    layers: dict[int, list[np.ndarray]] = {}
    for tr, chars in zip(traces, char_spans):
        row, span = recorded_row(tr.lse, tr.tok_logit, tr.deepconf, char_ends(tokenizer, tr.ids), chars, len(tr))
        rows.append(row)
        m, a = pool_states(tr.states, tr.prompt_state, span)
        mean.append(m)
        ans.append(a)
        for k, states in tr.layer_states.items():  # the mean over the answer's tokens, as V1 pools them
            pooled = states.mean(axis=0) if len(states) else tr.prompt_layer_states.get(k)
            if pooled is not None:
                layers.setdefault(k, []).append(np.asarray(pooled, np.float32))
    hidden = {"hidden_mean": np.stack(mean), "hidden_answer": np.stack(ans)}
    if traces and all(len(v) == len(traces) for v in layers.values()):
        hidden |= {layer_key(k): np.stack(v) for k, v in layers.items()}
    return energy_table(rows), hidden
