"""A multiple-choice problem's choices as candidates, for the HF backend (``ChoiceScorer.score_choices``).

Each choice is teacher-forced after the problem's context, which is encoded **once** and its KV
cache repeated for every choice (:func:`impetus.lm.scoring._forward_shared_prompt`); the row then
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

from impetus.energy.recorded import layer_key
from impetus.lm.recording import char_ends, pool_states, step_stats
from impetus.lm.sampler import Generation, ProgressFn
from impetus.lm.scoring import _forward_shared_prompt, _prompt_ids, _supports_logits_to_keep


def continuation_ids(tokenizer: Any, context: str, context_ids: list[int], continuation: str) -> list[int]:
    """The continuation's tokens as lm-eval splits them: ``tok(context + continuation)`` after the
    context's own length (so a BPE merge across the boundary is cut where lm-eval cuts it)."""
    whole = list(tokenizer(context + continuation)["input_ids"])
    ids = whole[len(context_ids):]
    if not ids:
        raise ValueError(f"choice {continuation!r} has no tokens of its own after context {context[-40:]!r}")
    return ids


def resolve_layers(spec: Sequence[int | str], n_layers: int) -> list[int]:
    """Layer indices of ``model.hidden_layers`` entries: an int k in 1..n_layers, or ``"mid"`` (n_layers // 2)."""
    out = []
    for s in spec:
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


@torch.inference_mode()
def score_choices(model: Any, tokenizer: Any, contexts: Sequence[str], continuations: Sequence[Sequence[str]],
                  layers: Sequence[int] = (), progress: ProgressFn | None = None) -> list[list[Generation]]:
    """One :class:`Generation` per (context, continuation), ``sample_idx`` = the choice's index,
    ``finish_reason`` ``"choice"``; ``seconds`` splits each problem's forward time over its choices."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    keep_ok = _supports_logits_to_keep(model)
    out: list[list[Generation]] = []
    for context, conts in zip(contexts, continuations):
        t0 = time.perf_counter()
        ctx = _prompt_ids(tokenizer, context, add_special_tokens=True)  # as the sampler tokenises a prompt
        comps = [continuation_ids(tokenizer, context, ctx, c) for c in conts]
        rows, states, *extra = _forward_shared_prompt(model, ctx, comps, pad, True, keep_ok, tuple(layers))
        by_layer = extra[0] if extra else {}
        recs = [_choice_record(tokenizer, ids, rows[j], states[j], {k: v[j] for k, v in by_layer.items()})
                for j, ids in enumerate(comps)]
        dt = (time.perf_counter() - t0) / max(len(conts), 1)
        gens = []
        for j, (text, ids, rec) in enumerate(zip(conts, comps, recs)):
            lp = rec["tok_logit"] - rec["lse"][:-1]
            gens.append(Generation(text=str(text), token_ids=list(ids), n_tokens=len(ids), finish_reason="choice",
                                   logprob_mean=float(lp.mean()), seconds=dt, sample_idx=j, record=rec))
        out.append(gens)
        if progress is not None:
            progress(sum(len(c) for c in comps), len(conts))
    return out
