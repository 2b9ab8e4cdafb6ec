"""Teacher-forced passes of the HF backend for EBD and V2 (behind :mod:`impetus.lm.sampler`'s protocols).

- :func:`encode_traces`: continuable :class:`impetus.lm.trace.Trace` s of given answers (EBD chain
  starts the sampler did not produce), the values the sampler would have recorded;
- :func:`answer_states`: an answer's last-layer states (V2's latents and its pooled states).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from impetus.lm.kv_cache import forward, out_cache, row_past
from impetus.lm.recording import last_state_hook, step_stats, tempered_lse
from impetus.lm.trace import Trace


@torch.inference_mode()
def encode_traces(model: Any, tokenizer: Any, prompt_ids: list[int], answers: list[list[int]],
                  keep_past: bool, temperature: float = 1.0) -> list[Trace]:
    """Traces of given answers after one prompt: one teacher-forced pass (right-padded batch);
    ``lse_temp`` at ``temperature``, as a sampler at that temperature records it."""
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
        stats = step_stats(rows[:T], torch.tensor(a, dtype=torch.long), temperature=temperature).cpu().numpy()
        lse = np.append(stats[:, 0], torch.logsumexp(rows[T], dim=-1).item()).astype(np.float32)
        lse_temp = np.append(stats[:, 3], tempered_lse(rows[T], temperature).item()).astype(np.float32)
        traces.append(Trace(ids=list(a), lse=lse, tok_logit=stats[:, 1].copy(), deepconf=stats[:, 2].copy(),
                            lse_temp=lse_temp,
                            states=h[j, P : P + T].numpy(), prompt_state=h[j, P - 1].numpy(),
                            past=row_past(out_cache(out).layers, mask.to(device), j) if keep_past else None))
    return traces


@torch.no_grad()
def answer_states(model: Any, prompt_ids: list[int], answer_ids: list[int]) -> torch.Tensor:
    """``[T + 1, H]``: the states that predicted answer tokens ``0..T-1``, then the state at the last
    answer token (post final norm), from one teacher-forced pass."""
    with last_state_hook(model, full=True) as state:
        # one row of logits: the states come from the hook, and a full [L, V] row block is large
        # for big vocabularies (Gemma 3: 262k tokens, ~1 MB a position)
        model(input_ids=torch.tensor([prompt_ids + answer_ids], device=next(model.parameters()).device),
              logits_to_keep=1)
        h = state()[0]
    p = len(prompt_ids)
    return h[p - 1 : p + len(answer_ids)].clone()
