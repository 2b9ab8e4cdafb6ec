"""Teacher-forced passes of the HF backend for EBD and V2 (behind :mod:`impetus.lm.sampler`'s protocols).

:func:`encode_traces`: continuable :class:`impetus.lm.trace.Trace` s of given answers (EBD chain
starts and V2 start answers the sampler did not produce), the values the sampler would have recorded.
:func:`encode_traces_shared`: the same for answers after many prompts that share a few-shot prefix,
kept once and attended apart (:mod:`impetus.lm.shared_prefix`), several prompts per pass.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from transformers import DynamicCache

from impetus.lm.kv_cache import forward, out_cache, row_past
from impetus.lm.recording import last_state_hook, layer_state_hook, step_stats, tempered_lse
from impetus.lm.shared_prefix import shared_prefix
from impetus.lm.trace import Trace


def _trace(logits: torch.Tensor, answer: list[int], start: int, h: torch.Tensor, hl: dict[int, torch.Tensor],
           temperature: float, past: Any) -> Trace:
    """One answer's trace from its row of a pass: ``logits[t]`` predicts answer token ``t`` (and
    ``logits[T]`` what follows it), the row's states begin the answer at column ``start``."""
    T = len(answer)
    rows = logits[: T + 1].float()
    stats = step_stats(rows[:T], torch.tensor(answer, dtype=torch.long), temperature=temperature).cpu().numpy()
    lse = np.append(stats[:, 0], torch.logsumexp(rows[T], dim=-1).item()).astype(np.float32)
    lse_temp = np.append(stats[:, 3], tempered_lse(rows[T], temperature).item()).astype(np.float32)
    return Trace(ids=list(answer), lse=lse, tok_logit=stats[:, 1].copy(), deepconf=stats[:, 2].copy(),
                 lse_temp=lse_temp, states=h[start : start + T].numpy(), prompt_state=h[start - 1].numpy(),
                 layer_states={k: v[start : start + T].numpy() for k, v in hl.items()},
                 prompt_layer_states={k: v[start - 1].numpy() for k, v in hl.items()}, past=past)


def encode_traces(model: Any, tokenizer: Any, prompt_ids: list[int], answers: list[list[int]],
                  keep_past: bool, temperature: float = 1.0, layers: Sequence[int] = ()) -> list[Trace]:
    """Traces of given answers after one prompt: one teacher-forced pass (right-padded batch);
    ``lse_temp`` at ``temperature``, as a sampler at that temperature records it; the states of
    ``layers`` (HF ``hidden_states`` indices, ``model.hidden_layers``) as the sampler records them."""
    return encode_traces_shared(model, tokenizer, [list(prompt_ids)] * len(answers), answers, None, 0, keep_past,
                                temperature, layers, rows_per_pass=max(1, len(answers)))


@torch.inference_mode()
def encode_traces_shared(model: Any, tokenizer: Any, prompts: list[list[int]], answers: list[list[int]],
                         prefix: Any, prefix_len: int, keep_past: bool, temperature: float = 1.0,
                         layers: Sequence[int] = (), rows_per_pass: int = 16) -> list[Trace]:
    """:func:`encode_traces` of ``answers[i]`` after ``prompts[i]``, whose first ``prefix_len`` tokens
    all prompts share and ``prefix`` caches (batch 1; None with ``prefix_len`` 0: no prefix apart):
    each pass feeds ``rows_per_pass`` rows of prompt rest + answer only, the rests left-padded so every
    answer starts at one column (so the last ``width + 1`` logits hold every row's), the answers
    right-padded, positions after the prefix; with a prefix the model's attention must be
    :data:`impetus.lm.shared_prefix.ATTENTION`. Kept caches get the prefix back, so they are whole
    (:func:`~impetus.lm.kv_cache.row_past`)."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    traces: list[Trace] = []
    for lo in range(0, len(answers), rows_per_pass):
        rests = [list(p[prefix_len:]) for p in prompts[lo : lo + rows_per_pass]]
        chunk = [list(a) for a in answers[lo : lo + rows_per_pass]]
        start, width = max(len(r) for r in rests), max(len(a) for a in chunk)
        ids = torch.full((len(chunk), start + width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, (rest, a) in enumerate(zip(rests, chunk)):
            ids[j, start - len(rest) : start + len(a)] = torch.tensor(rest + a, dtype=torch.long)
            mask[j, start - len(rest) : start + len(a)] = 1
        pos = (prefix_len + mask.cumsum(-1) - 1).clamp_(min=0)
        mask = mask.to(device)
        cache = DynamicCache(config=model.config)
        with shared_prefix(prefix), last_state_hook(model, full=True) as state, \
                layer_state_hook(model, layers, full=True) as layer_state:
            # the last width + 1 positions: the rows predicting each answer token and the one after
            out = forward(model, cache, input_ids=ids.to(device), attention_mask=mask, position_ids=pos.to(device),
                          use_cache=True, logits_to_keep=width + 1)
            h, hl = state(), layer_state()
        head = prefix.layers if keep_past and prefix is not None else None
        traces += [_trace(out.logits[j], a, start, h[j], {k: v[j] for k, v in hl.items()}, temperature,
                          row_past(out_cache(out).layers, mask, j, head) if keep_past else None)
                   for j, a in enumerate(chunk)]
    return traces
