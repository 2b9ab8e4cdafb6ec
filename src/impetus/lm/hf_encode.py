"""Teacher-forced passes of the HF backend for EBD and V2 (behind :mod:`impetus.lm.sampler`'s protocols).

:func:`encode_traces`: continuable :class:`impetus.lm.trace.Trace` s of given answers (EBD chain
starts and V2 start answers the sampler did not produce), the values the sampler would have recorded.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from transformers import DynamicCache

from impetus.lm.kv_cache import forward, out_cache, row_past
from impetus.lm.recording import last_state_hook, layer_state_hook, step_stats, tempered_lse
from impetus.lm.trace import Trace


@torch.inference_mode()
def encode_traces(model: Any, tokenizer: Any, prompt_ids: list[int], answers: list[list[int]],
                  keep_past: bool, temperature: float = 1.0, layers: Sequence[int] = ()) -> list[Trace]:
    """Traces of given answers after one prompt: one teacher-forced pass (right-padded batch);
    ``lse_temp`` at ``temperature``, as a sampler at that temperature records it; the states of
    ``layers`` (HF ``hidden_states`` indices, ``model.hidden_layers``) as the sampler records them."""
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
    with last_state_hook(model, full=True) as state, layer_state_hook(model, layers, full=True) as layer_state:
        # the last width + 1 positions: the rows predicting each answer token and the one after
        out = forward(model, cache, input_ids=ids.to(device), attention_mask=mask.to(device),
                      use_cache=True, logits_to_keep=width + 1)
        h, hl = state(), layer_state()
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
                            layer_states={k: v[j, P : P + T].numpy() for k, v in hl.items()},
                            prompt_layer_states={k: v[j, P - 1].numpy() for k, v in hl.items()},
                            past=row_past(out_cache(out).layers, mask.to(device), j) if keep_past else None))
    return traces
