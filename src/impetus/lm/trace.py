"""Complete answers that can be continued and scored without another forward pass (EBD states).

A :class:`Trace` is an answer after a prompt together with what the model computed for it: the
per-token raw-logit statistics of :mod:`impetus.lm.recording`, every token's last-layer state and
the KV cache of prompt + answer. Energy-based decoding keeps one per chain: a proposal that keeps
the first ``t`` tokens continues from the cache cropped to them (the prompt and the kept prefix are
never re-encoded, :meth:`impetus.lm.hf_sampler.HFSampler.generate` ``past=``), and its energies
come from the kept prefix's recorded values spliced with the new tokens' (no teacher-forced pass).
Only chain starts that the sampler did not produce are encoded once (:func:`encode_traces`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import DynamicCache

from impetus.energy.recorded import energy_table, recorded_row
from impetus.lm.kv_cache import RowPast, forward, out_cache, row_past
from impetus.lm.recording import char_ends, last_state_hook, pool_states, step_stats
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
    past: RowPast | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def truncate(self, m: int) -> Trace:
        """The first ``m`` tokens (``lse`` keeps the step after them; the cache may stay longer)."""
        return replace(self, ids=self.ids[:m], lse=self.lse[: m + 1], tok_logit=self.tok_logit[:m],
                       deepconf=self.deepconf[:m], states=self.states[:m])


def continued(prefix: Trace, t: int, gen: Generation) -> Trace:
    """``prefix``'s first ``t`` tokens followed by ``gen``, sampled after them with ``keep_states``
    (and ``keep_past``): the prefix's recorded values spliced with the continuation's."""
    rec = gen.record
    if rec is None or "states" not in rec:
        raise ValueError("the continuation was sampled without recording its states (keep_states=True)")
    return Trace(ids=prefix.ids[:t] + list(gen.token_ids), lse=np.concatenate([prefix.lse[:t], rec["lse"]]),
                 tok_logit=np.concatenate([prefix.tok_logit[:t], rec["tok_logit"]]),
                 deepconf=np.concatenate([prefix.deepconf[:t], rec["deepconf"]]),
                 states=np.concatenate([prefix.states[:t], rec["states"]]), prompt_state=prefix.prompt_state,
                 past=gen.past)


def cut_at_stop(trace: Trace, tokenizer: Any, stops: list[str]) -> Trace:
    """End ``trace`` before its first stop string, as the sampler would have: a continuation only
    checks its own new text, so a stop string straddling the kept prefix and the new tokens is
    found here."""
    text = tokenizer.decode(trace.ids, skip_special_tokens=False)
    hits = [p for p in (text.find(s) for s in stops) if p >= 0]
    return trace.truncate(kept_before(tokenizer, trace.ids, min(hits))) if hits else trace


@torch.inference_mode()
def encode_traces(model: Any, tokenizer: Any, prompt_ids: list[int], answers: list[list[int]],
                  keep_past: bool) -> list[Trace]:
    """Traces of given answers after one prompt: one teacher-forced pass (right-padded batch)."""
    device = next(model.parameters()).device
    n, P = len(answers), len(prompt_ids)
    width = max(len(a) for a in answers)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((n, P + width), pad, dtype=torch.long)
    mask = torch.zeros((n, P + width), dtype=torch.long)
    for j, a in enumerate(answers):
        ids[j, : P + len(a)] = torch.tensor(prompt_ids + list(a), dtype=torch.long)
        mask[j, : P + len(a)] = 1
    cache = DynamicCache(config=model.config)
    with last_state_hook(model, full=True) as state:
        # the last width + 1 positions: the rows predicting each answer token and the one after
        out = forward(model, cache, input_ids=ids.to(device), attention_mask=mask.to(device),
                      use_cache=True, logits_to_keep=width + 1)
        h = state()
    traces = []
    for j, a in enumerate(answers):
        T = len(a)
        rows = out.logits[j, : T + 1].float()
        stats = step_stats(rows[:T], torch.tensor(a, dtype=torch.long)).cpu().numpy()
        lse = np.append(stats[:, 0], torch.logsumexp(rows[T], dim=-1).item()).astype(np.float32)
        traces.append(Trace(ids=list(a), lse=lse, tok_logit=stats[:, 1].copy(), deepconf=stats[:, 2].copy(),
                            states=h[j, P : P + T].numpy(), prompt_state=h[j, P - 1].numpy(),
                            past=row_past(out_cache(out).layers, mask.to(device), j) if keep_past else None))
    return traces


def trace_energies(tokenizer: Any, traces: list[Trace], char_spans: list[tuple[int, int] | None]
                   ) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Logit energies (and flags) and pooled hidden states of traces, from their recorded values:
    the same numbers :func:`impetus.lm.scoring.score_candidates` computes with a forward pass."""
    rows, mean, ans = [], [], []
    for tr, chars in zip(traces, char_spans):
        row, span = recorded_row(tr.lse, tr.tok_logit, tr.deepconf, char_ends(tokenizer, tr.ids), chars, len(tr))
        rows.append(row)
        m, a = pool_states(tr.states, tr.prompt_state, span)
        mean.append(m)
        ans.append(a)
    return energy_table(rows), {"hidden_mean": np.stack(mean), "hidden_answer": np.stack(ans)}
