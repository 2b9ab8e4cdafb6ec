"""A multiple-choice problem's choices as candidates, for the HF backend (``ChoiceScorer.score_choices``).

Each choice is teacher-forced after the problem's context, which is encoded **once** and its KV
cache gathered for every choice (several problems per pass, :func:`_forward_batch`); the row then
carries exactly what the sampler records for a sampled completion (:mod:`impetus.lm.recording`:
per-token ``lse`` (T + 1), ``tok_logit``, ``deepconf``, ``char_ends``, and the pooled last-layer
states), so the energies, mining, scorer and rerank stages read it unchanged.

Tokenisation follows lm-evaluation-harness (``HFLM._encode_pair``): the context is tokenised alone,
``context + continuation`` as a whole, and the continuation's tokens are the whole's after the
context's length. Its log-likelihood is then lm-eval's: the sum of the continuation tokens'
log-probabilities under the raw logits (``tok_logit - lse``), which its ``acc`` ranks by
(``acc_norm`` divides by the choice's length in characters).

Besides the last layer, ``layers`` (HF's ``hidden_states`` indices: k = the output of decoder block
k) are pooled over the choice's tokens into ``hidden_l<k>``: teacher-forced states of any layer
cost nothing extra, and a middle layer carries more of the signal than the last one (issue 24).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from impetus.energy.recorded import layer_key
from impetus.lm.kv_cache import forward, out_cache
from impetus.lm.recording import char_ends, pool_states, step_stats
from impetus.lm.sampler import Generation, ProgressFn
from impetus.lm.scoring import _prompt_ids


def continuation_ids(tokenizer: Any, context: str, context_ids: list[int], continuation: str) -> list[int]:
    """The continuation's tokens as lm-eval splits them: ``tok(context + continuation)`` after the
    context's own length (so a BPE merge across the boundary is cut where lm-eval cuts it)."""
    whole = list(tokenizer(context + continuation)["input_ids"])
    ids = whole[len(context_ids):]
    if not ids:
        raise ValueError(f"choice {continuation!r} has no tokens of its own after context {context[-40:]!r}")
    return ids


def resolve_layers(spec: Sequence[int | str], n_layers: int) -> list[int]:
    """Layer indices of ``model.hidden_layers`` entries: an int k in 1..n_layers, ``"mid"`` (n_layers // 2),
    or a fraction of the depth ``"a/b"`` (round(n_layers * a / b), at least 1)."""
    out = []
    for s in spec:
        if isinstance(s, str) and "/" in s:
            a, b = (int(x) for x in s.split("/"))
            k = max(1, round(n_layers * a / b))
        else:
            k = n_layers // 2 if s == "mid" else int(s)
        if not 1 <= k <= n_layers:
            raise ValueError(f"hidden layer {s!r} is outside 1..{n_layers} (the model's decoder blocks)")
        out.append(k)
    return sorted(set(out))


def _choice_record(tokenizer: Any, ids: list[int], logits: torch.Tensor, states: torch.Tensor,
                   extra: dict[int, torch.Tensor]) -> dict[str, np.ndarray]:
    """The stored arrays of one choice of ``T`` tokens from its ``T + 1`` logits rows and states
    (row 0 of ``states`` is the last context token): the schema a recording sampler writes."""
    T = len(ids)
    stats = step_stats(logits[:T], torch.tensor(ids, dtype=torch.long)).cpu().numpy()
    lse = np.append(stats[:, 0], torch.logsumexp(logits[T], dim=-1).item()).astype(np.float32)
    mean, answer = pool_states(states[1:].cpu(), states[0].cpu(), (0, T))  # the whole choice is the answer
    rec = {"lse": lse, "tok_logit": stats[:, 1].astype(np.float32), "deepconf": stats[:, 2].astype(np.float32),
           "char_ends": np.asarray(char_ends(tokenizer, ids), np.int32), "hidden_mean": mean, "hidden_answer": answer}
    rec |= {layer_key(k): h.mean(dim=0).cpu().numpy().astype(np.float32) for k, h in extra.items()}
    return rec


def _forward_batch(model: Any, ctxs: list[list[int]], comps: list[list[list[int]]], pad: int,
                   layers: Sequence[int]) -> tuple[list[torch.Tensor], list[torch.Tensor], dict[int, list[torch.Tensor]]]:
    """One teacher-forced pass for the choices of several problems: the contexts are encoded once,
    left-padded into one batch, then each choice continues its own problem's cache (gathered to one
    row per choice) right-padded. Returns per choice, in problem-then-choice order, its ``T + 1``
    logits rows, its ``T + 1`` last-layer states (row 0: the last context token) and, per layer in
    ``layers``, its ``[T, H]`` states there."""
    device = next(model.parameters()).device
    width = max(len(c) for c in ctxs)
    ids = torch.full((len(ctxs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ctxs), width), dtype=torch.long)
    for i, c in enumerate(ctxs):
        ids[i, width - len(c):], mask[i, width - len(c):] = torch.tensor(c), 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    out = forward(model, cache, input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                  use_cache=True, output_hidden_states=True, logits_to_keep=1)
    first_logits, first_h = out.logits[:, -1].float(), out.hidden_states[-1][:, -1].float()
    owner = [i for i, cs in enumerate(comps) for _ in cs]
    flat = [c for cs in comps for c in cs]
    sel = torch.tensor(owner, device=device)
    cache = out_cache(out)
    cache.batch_select_indices(sel)  # one cache row per choice: its problem's context
    T = max(len(c) for c in flat)
    cont = torch.full((len(flat), T), pad, dtype=torch.long)
    cont_mask = torch.zeros((len(flat), T), dtype=torch.long)
    for r, c in enumerate(flat):
        cont[r, : len(c)], cont_mask[r, : len(c)] = torch.tensor(c), 1
    lengths = torch.tensor([len(ctxs[i]) for i in owner])
    out = forward(model, cache, input_ids=cont.to(device), attention_mask=torch.cat([mask[owner], cont_mask], 1).to(device),
                  position_ids=(lengths[:, None] + torch.arange(T)).to(device), use_cache=True, output_hidden_states=True)
    logits, last = out.logits.float(), out.hidden_states[-1].float()
    rows = [torch.cat([first_logits[i][None], logits[r, : len(c)]]) for r, (i, c) in enumerate(zip(owner, flat))]
    states = [torch.cat([first_h[i][None], last[r, : len(c)]]) for r, (i, c) in enumerate(zip(owner, flat))]
    extra = {k: [out.hidden_states[k][r, : len(c)].float() for r, c in enumerate(flat)] for k in layers}
    return rows, states, extra


@torch.inference_mode()
def score_choices(model: Any, tokenizer: Any, contexts: Sequence[str], continuations: Sequence[Sequence[str]],
                  layers: Sequence[int] = (), progress: ProgressFn | None = None, batch_rows: int = 16,
                  ) -> list[list[Generation]]:
    """One :class:`Generation` per (context, continuation), ``sample_idx`` = the choice's index,
    ``finish_reason`` ``"choice"``. Problems are scored together up to ``batch_rows`` choices a pass
    (speed only: a problem's rows do not depend on its batch, up to float rounding; 16 was the fastest
    of 1, 16, 64 and 128 for SmolLM2-135M on 2 Xeon cores: longer batches pad every choice to the
    longest one's length); ``seconds`` splits each pass's time over its choices."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    out: list[list[Generation]] = []
    for batch in _batches([len(c) for c in continuations], batch_rows):
        t0 = time.perf_counter()
        ctxs = [_prompt_ids(tokenizer, contexts[i], add_special_tokens=True) for i in batch]  # as the sampler does
        comps = [[continuation_ids(tokenizer, contexts[i], ctx, c) for c in continuations[i]] for i, ctx in zip(batch, ctxs)]
        rows, states, extra = _forward_batch(model, ctxs, comps, pad, tuple(layers))
        dt = (time.perf_counter() - t0) / len(rows)
        r = 0
        for i, ids_of in zip(batch, comps):
            gens = []
            for j, (text, ids) in enumerate(zip(continuations[i], ids_of)):
                rec = _choice_record(tokenizer, ids, rows[r], states[r], {k: v[r] for k, v in extra.items()})
                lp = rec["tok_logit"] - rec["lse"][:-1]
                gens.append(Generation(text=str(text), token_ids=list(ids), n_tokens=len(ids), finish_reason="choice",
                                       logprob_mean=float(lp.mean()), seconds=dt, sample_idx=j, record=rec))
                r += 1
            out.append(gens)
        if progress is not None:
            progress(sum(len(c) for cs in comps for c in cs), len(rows))
    return out


def _batches(counts: list[int], batch_rows: int) -> list[list[int]]:
    """Consecutive problem indices, as many per batch as fit in ``batch_rows`` choices (at least one)."""
    out: list[list[int]] = []
    for i, k in enumerate(counts):
        if out and sum(counts[j] for j in out[-1]) + k <= batch_rows:
            out[-1].append(i)
        else:
            out.append([i])
    return out
