"""What the sampler records while it decodes, so no second (teacher-forced) pass is needed.

At every decoding step the model has just produced the *raw* (un-tempered, un-truncated) logits of
the next-token distribution; per row we keep, for that step:

- ``lse``: ``logsumexp`` of the raw logits (the step's log-normaliser);
- ``tok_logit``: the raw logit of the token the row sampled (``f_i[x_i]``);
- ``deepconf``: DeepConf token confidence ``-(1/k) sum_{j<=k} log p_i(j)`` over the top ``k = 20``
  (arXiv:2508.15260);
- ``lse_temp``: ``logsumexp`` of the logits divided by the sampling temperature, so the tempered
  proposal's log-normaliser ``log Σ_v p_i(v)^α = lse_temp − α·lse`` (α = 1/temperature) is known
  without another pass (power-sampling EBD, :mod:`impetus.decoding.mh`; kept with the states only);

and, after every forward pass, the last-layer state (output of the final norm) of the token just
fed, and that token's state at each further layer of ``model.hidden_layers`` (HF's
``hidden_states[k]``: the output of decoder block k), pooled into ``hidden_l<k>`` as the mean over the
completion's tokens, exactly as scored choices pool a teacher-forced pass (issue 25). These are exactly the quantities :func:`impetus.energy.logit.logit_energies` derives from a
teacher-forced pass (spilled energy ``lse[i+1] - tok_logit[i]`` and marginal energy
``-lse[i+1]``, arXiv:2602.18671; log-prob ``tok_logit[i] - lse[i]``), so
:func:`impetus.energy.logit.per_token_from_record` (pooled by
:func:`impetus.energy.recorded.recorded_energies`) gives the same numbers without any LM forward.
The stored keys and their candidate columns are one schema, :data:`impetus.energy.recorded.RECORD_KEYS`.

Spilled energy needs ``lse`` *after* the last kept token: a row ending by EOS already has it (the
step that sampled EOS); a row cut by a stop string has it (its first dropped token's step); a row
cut by ``max_new_tokens`` gets one extra batched forward of its last token (the sampler's "tail").
Never ``generate().scores``: those are tempered and top-p masked.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from impetus.energy.logit import DEEPCONF_TOP_K
from impetus.energy.recorded import POOLED_STATES, RECORD_COLUMNS, RECORD_KEYS, TOKEN_ARRAYS  # noqa: F401 (the record schema)
from impetus.energy.recorded import layer_key
from impetus.lm.precision import final_norm


@dataclass
class RowRecord:
    """The recorded values of one row, appended step by step."""

    lse: list[float] = field(default_factory=list)
    tok_logit: list[float] = field(default_factory=list)
    deepconf: list[float] = field(default_factory=list)
    lse_temp: list[float] = field(default_factory=list)  # logsumexp(logits / temperature), T + 1 like lse
    states: list[torch.Tensor] = field(default_factory=list)  # state of each fed token, in order
    prompt_state: torch.Tensor | None = None  # last prompt token's state (fallback for T = 0)
    # Further layers (``model.hidden_layers``), by HF ``hidden_states`` index: each fed token's state there,
    # and the last prompt token's (the T = 0 fallback, as for the last layer).
    layer_states: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    prompt_layer_state: dict[int, torch.Tensor] = field(default_factory=dict)


def step_stats(logits: torch.Tensor, tokens: torch.Tensor, top_k: int = DEEPCONF_TOP_K,
               temperature: float = 1.0) -> torch.Tensor:
    """``[B, 4]`` float32: (lse, raw logit of ``tokens``, DeepConf confidence, lse of the logits over
    ``temperature``) of one step's raw logits."""
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    chosen = logits.gather(1, tokens[:, None].to(logits.device))[:, 0]
    top = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values
    conf = -(top.mean(dim=-1) - lse)  # top-k of log_softmax = top-k of logits minus lse
    return torch.stack([lse, chosen, conf, tempered_lse(logits, temperature)], dim=1)


def tempered_lse(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logsumexp(logits / temperature)`` (the raw one at temperature 0 or 1)."""
    logits = logits.float()
    return torch.logsumexp(logits if temperature in (0, 1) else logits / temperature, dim=-1)


def char_ends(tokenizer: Any, ids: list[int]) -> list[int]:
    """End character offset of each token in the decoded text (prefix decodes, as the sampler does)."""
    return [len(tokenizer.decode(ids[: k + 1], skip_special_tokens=False)) for k in range(len(ids))]


def finalize(rec: RowRecord, n_tokens: int, answer_span: tuple[int, int] | None,
             keep_states: bool = False) -> dict[str, np.ndarray]:
    """The stored arrays of one candidate of ``n_tokens`` kept tokens.

    ``answer_span`` is the answer's *token* span (None: not found); the answer state follows the
    teacher-forced rule of :func:`impetus.lm.scoring.score_candidates`: the state at the span's
    last token, else at the last token; with no token at all, the last prompt token's state.
    ``keep_states`` adds ``states``, every kept token's state (``[T, H]``), for continuing, and the last
    prompt token's (``prompt_state``; ``prompt_states_l<k>`` per further layer).
    """
    T = int(n_tokens)
    if len(rec.lse) < T + 1 or len(rec.states) < T:
        raise RuntimeError(f"recording incomplete: {len(rec.lse)} lse / {len(rec.states)} states for {T} tokens")
    out = {
        "lse": np.asarray(rec.lse[: T + 1], np.float32),
        "tok_logit": np.asarray(rec.tok_logit[:T], np.float32),
        "deepconf": np.asarray(rec.deepconf[:T], np.float32),
    }
    states = torch.stack(rec.states[:T]) if T else None
    if T or rec.prompt_state is not None:
        out["hidden_mean"], out["hidden_answer"] = pool_states(states, rec.prompt_state, answer_span)
    for k, seq in rec.layer_states.items():  # mean over the kept tokens, as scored choices pool them
        if T:
            out[layer_key(k)] = torch.stack(seq[:T]).float().mean(dim=0).numpy()
        elif k in rec.prompt_layer_state:
            out[layer_key(k)] = rec.prompt_layer_state[k].float().numpy()
    if keep_states:
        out["lse_temp"] = np.asarray(rec.lse_temp[: T + 1], np.float32)
        width = rec.prompt_state.shape[-1] if rec.prompt_state is not None else 0
        out["states"] = states.float().numpy() if T else np.zeros((0, width), np.float32)
        for k, seq in rec.layer_states.items():  # each further layer's too (traces: V2, EBD)
            out[f"states_l{k}"] = torch.stack(seq[:T]).float().numpy() if T else np.zeros((0, width), np.float32)
        if rec.prompt_state is not None:  # a trace's T = 0 fallback (Power-SMC's particles start at the prompt)
            out["prompt_state"] = rec.prompt_state.float().numpy()
        for k, h in rec.prompt_layer_state.items():
            out[f"prompt_states_l{k}"] = h.float().numpy()
    return out


def pool_states(states: Any, prompt_state: Any, answer_span: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """``(hidden_mean, hidden_answer)`` float32 of ``[T, H]`` token states: their mean, and the
    state at the answer span's last token (else the last token); with T = 0 both are the last
    prompt token's state (the rule of :func:`impetus.lm.scoring.score_candidates`)."""
    if states is None or len(states) == 0:
        h = np.asarray(prompt_state, np.float32)
        return h, h
    states = np.asarray(states, np.float32)
    T = len(states)
    end = answer_span[1] if answer_span is not None and answer_span[1] <= T else T
    return states.mean(axis=0), states[end - 1].copy()


@contextmanager
def last_state_hook(model: Any, full: bool = False) -> Iterator[Callable[[], torch.Tensor | None]]:
    """Capture the final norm's output at the last position of every forward (``[B, H]``; with
    ``full`` every position, ``[B, L, H]``).

    A forward hook on the decoder's final norm gives the post-norm last-layer state without
    ``output_hidden_states`` (which would keep every layer's states of a whole prompt alive).
    Yields a getter of the latest capture; None when the model has no ``model.norm``.
    """
    norm = final_norm(model, required=False)
    box: dict[str, torch.Tensor] = {}
    if norm is None:
        yield lambda: None
        return

    def hook(_module: Any, _inputs: Any, output: torch.Tensor) -> None:
        box["h"] = (output if full else output[:, -1]).detach().float().cpu()

    handle = norm.register_forward_hook(hook)
    try:
        yield lambda: box.get("h")
    finally:
        handle.remove()


@contextmanager
def layer_state_hook(model: Any, layers: Sequence[int], full: bool = False
                     ) -> Iterator[Callable[[], dict[int, torch.Tensor]]]:
    """Capture, at the last position of every forward, HF's ``hidden_states[k]`` for each ``k`` in
    ``layers`` (``[B, H]`` each; with ``full`` every position, ``[B, L, H]``): decoder block k's
    output, or the final norm's for the last block (HF reports the normed state there). Forward
    hooks, not ``output_hidden_states``, so no other layer's states of a whole prompt are kept.
    Yields a getter of the latest captures ({} without layers)."""
    inner = getattr(model, "model", None)
    blocks, norm = getattr(inner, "layers", None), getattr(inner, "norm", None)
    box: dict[int, torch.Tensor] = {}
    handles = []
    if layers and (blocks is None or norm is None):
        raise ValueError(f"{type(model).__name__} exposes no model.layers / model.norm to record hidden_layers from")
    for k in layers:
        module = norm if k == len(blocks) else blocks[k - 1]

        def hook(_module: Any, _inputs: Any, output: Any, k: int = k) -> None:
            h = output[0] if isinstance(output, tuple) else output
            box[k] = (h if full else h[:, -1]).detach().float().cpu()

        handles.append(module.register_forward_hook(hook))
    try:
        yield lambda: dict(box)
    finally:
        for handle in handles:
            handle.remove()
