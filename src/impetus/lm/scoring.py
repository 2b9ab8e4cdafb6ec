"""Teacher-forced scoring of given completions: per-candidate logit energies and pooled hidden states.

Each candidate is ``prompt + completion``. The prompt is encoded once per problem and its KV
cache reused for all of its candidates, whose completions then go through one batched forward
pass; together these give the logits of every completion token (plus the row after the last token, needed by Spilled Energy,
arXiv:2602.18671) and the last-layer hidden states. We deliberately do *not* reuse
``generate().scores``: those are post-processed (temperature, top-p masking to ``-inf``), which
would distort ``logsumexp``-based energies; a fresh forward pass gives the raw logits.

Tokenisation: the prompt and the completion are tokenised separately and their ids concatenated,
so completion token boundaries match generation (where the completion was produced token by token
after the prompt). Re-tokenising the decoded completion text can still differ from the sampled
ids in rare cases (e.g. non-canonical BPE merges); that is an accepted approximation.

Memory: with V = 49152 (SmolLM2) full logits of a whole dataset would not fit, so energies are
computed batch by batch and only ``T + 1`` rows per candidate are ever materialised in float32;
where the model supports ``logits_to_keep`` the (V-wide) LM head is applied to the prompt's last
row only.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from impetus.energy.logit import candidate_energy_row, logit_energies
from impetus.energy.recorded import energy_table
from impetus.lm.kv_cache import forward, out_cache
from impetus.lm.recording import pool_states


@dataclass
class ScoreResult:
    """Output of :func:`score_candidates`, rows in the input order.

    Attributes:
        energies: one row per candidate with :data:`impetus.energy.logit.ENERGY_COLUMNS`
            (float, lower = better) and :data:`~impetus.energy.logit.FLAG_COLUMNS` (bool).
        hidden_mean: ``[N, H]`` float32, last-layer (post final norm) hidden states mean-pooled
            over the completion tokens; ``None`` when ``hidden=False``.
        hidden_answer: ``[N, H]`` float32, last-layer hidden state at the answer's last token
            (fallback: last completion token); ``None`` when ``hidden=False``.
        seconds: wall-clock time of the whole scoring call.
        n_tokens: ``[N]`` number of completion tokens scored per candidate.
        answer_token_spans: per candidate the ``(start, end)`` completion-token span, or None.
    """

    energies: pd.DataFrame
    hidden_mean: np.ndarray | None
    hidden_answer: np.ndarray | None
    seconds: float
    n_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    answer_token_spans: list[tuple[int, int] | None] = field(default_factory=list)


def _span_from_offsets(
    offsets: Sequence[tuple[int, int]], char_span: tuple[int, int] | None
) -> tuple[int, int] | None:
    """Token span ``[start, end)`` of all tokens overlapping the character span ``[a, b)``."""
    if char_span is None:
        return None
    a, b = int(char_span[0]), int(char_span[1])
    if b <= a:
        return None
    # A token overlaps [a, b) iff it starts before b and ends after a. Zero-width tokens (s == e,
    # e.g. special tokens) cover no character and are skipped.
    hits = [i for i, (s, e) in enumerate(offsets) if e > s and s < b and e > a]
    if not hits:
        return None
    return hits[0], hits[-1] + 1


def _tokenize_completion(tokenizer: Any, completion: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Completion ids (no special tokens) and their character offsets (needs a fast tokenizer)."""
    enc = tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def completion_token_span(
    tokenizer: Any, completion: str, char_span: tuple[int, int] | None
) -> tuple[int, int] | None:
    """Map a character span ``[start, end)`` in ``completion`` to completion token indices.

    Any token overlapping the span counts, so a token such as ``" 42"`` (with a leading space)
    is included for the answer ``"42"``. Returns ``None`` when the span is None/empty or no
    token overlaps it. Token indices refer to ``tokenizer(completion, add_special_tokens=False)``.
    """
    if char_span is None:
        return None
    _, offsets = _tokenize_completion(tokenizer, completion)
    return _span_from_offsets(offsets, char_span)


def _supports_logits_to_keep(model: Any) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _forward_shared_prompt(
    model: Any, p_ids: list[int], comps: list[list[int]], pad_id: int, hidden: bool, keep_ok: bool
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Teacher-forced pass of several completions after one prompt.

    The prompt is run once with ``use_cache=True``; its cache is repeated for the ``len(comps)``
    rows, which are right-padded (pads come after every real token, so causal attention never
    sees them). Returns per completion the ``T + 1`` float32 logits rows predicting its tokens
    and the one after, and (if ``hidden``) the matching ``T + 1`` last-layer states, whose row 0
    is the last prompt token.
    """
    device = next(model.parameters()).device
    kwargs: dict[str, Any] = {"output_hidden_states": hidden}
    if keep_ok:
        kwargs["logits_to_keep"] = 1  # only the row predicting the first completion token
    out = model(input_ids=torch.tensor([p_ids], device=device), use_cache=True, **kwargs)
    first_logits = out.logits[0, -1].float()
    first_h = out.hidden_states[-1][0, -1].float() if hidden else None
    cache = out_cache(out)
    n, width, P = len(comps), max(len(c) for c in comps), len(p_ids)
    if width == 0:
        return [first_logits[None]] * n, ([first_h[None]] * n if hidden else None)
    cache.batch_repeat_interleave(n)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, P + width), dtype=torch.long)
    mask[:, :P] = 1
    for j, c in enumerate(comps):
        ids[j, : len(c)] = torch.tensor(c, dtype=torch.long)
        mask[j, P : P + len(c)] = 1
    pos = torch.arange(P, P + width).expand(n, width)
    out = forward(model, cache, input_ids=ids.to(device), attention_mask=mask.to(device),
                  position_ids=pos.to(device), use_cache=True, output_hidden_states=hidden)
    logits = out.logits.float()
    rows = [torch.cat([first_logits[None], logits[j, : len(c)]]) for j, c in enumerate(comps)]
    states = None
    if hidden:
        last = out.hidden_states[-1].float()
        states = [torch.cat([first_h[None], last[j, : len(c)]]) for j, c in enumerate(comps)]
    return rows, states


def _prompt_ids(tokenizer: Any, prompt: str, add_special_tokens: bool) -> list[int]:
    ids = list(tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"])
    if not ids:
        # Some row must predict the first completion token; BOS is the natural empty context.
        if tokenizer.bos_token_id is None:
            raise ValueError("empty prompt and the tokenizer has no BOS token to condition on")
        ids = [tokenizer.bos_token_id]
    return ids


def score_candidates(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    completions: list[str],
    answer_spans: list[tuple[int, int] | None],
    batch_size: int = 8,
    hidden: bool = True,
    progress: bool = False,
    add_special_tokens: bool = True,
) -> ScoreResult:
    """Teacher-forced forward pass over ``prompt + completion`` for every candidate.

    Args:
        model: a Hugging Face causal LM (``model(input_ids, attention_mask) -> .logits``).
        tokenizer: its *fast* tokenizer (offsets mapping is needed for answer spans).
        prompts, completions: the exact prompt text fed to the sampler and the decoded completion.
        answer_spans: per candidate the answer's character span ``[start, end)`` in the
            completion, or None (then energies pool over the whole completion, flag False).
        batch_size: most candidates of one prompt per forward pass (more are split into
            several passes that each re-encode the prompt); results are in input order.
        hidden: also return pooled last-layer hidden states (``output_hidden_states=True``).
        progress: show a tqdm bar over batches.
        add_special_tokens: passed when tokenising the prompt; must match how the sampler
            tokenised it (e.g. False when a chat template already inserted BOS).

    Returns:
        :class:`ScoreResult`. An empty completion does not crash: its energies are
        :data:`impetus.energy.logit.FILL_VALUE` with ``empty_completion=True``, and its hidden
        states fall back to the last prompt token.
    """
    n = len(prompts)
    if not (len(completions) == len(answer_spans) == n):
        raise ValueError(f"length mismatch: {n} prompts, {len(completions)} completions, {len(answer_spans)} spans")
    t0 = time.perf_counter()
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0

    # Tokenise everything up front (cheap) so batches can be formed by length.
    prompt_ids: list[list[int]] = []
    comp_ids: list[list[int]] = []
    tok_spans: list[tuple[int, int] | None] = []
    for prompt, completion, span in zip(prompts, completions, answer_spans):
        prompt_ids.append(_prompt_ids(tokenizer, prompt, add_special_tokens))
        ids, offsets = _tokenize_completion(tokenizer, completion)
        comp_ids.append(ids)
        tok_spans.append(_span_from_offsets(offsets, span))

    # Candidates sharing a prompt (the N samples of one problem) are scored together: the prompt,
    # often a long few-shot block, is encoded once and its KV cache reused for every completion.
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in range(n):
        groups.setdefault(tuple(prompt_ids[i]), []).append(i)
    chunks = [(list(p), idx[k : k + batch_size]) for p, idx in groups.items() for k in range(0, len(idx), batch_size)]
    keep_ok = _supports_logits_to_keep(model)

    rows: list[dict | None] = [None] * n
    h_mean: list[np.ndarray | None] = [None] * n
    h_ans: list[np.ndarray | None] = [None] * n

    iterator: Any = chunks
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(chunks, desc="scoring", unit="batch")

    with torch.inference_mode():
        for p_ids, batch in iterator:
            comps = [comp_ids[i] for i in batch]
            logit_rows, last_h = _forward_shared_prompt(model, p_ids, comps, pad_id, hidden, keep_ok)
            for j, i in enumerate(batch):
                T = len(comp_ids[i])
                per_tok = logit_energies(logit_rows[j], torch.tensor(comp_ids[i], dtype=torch.long))
                rows[i] = candidate_energy_row(per_tok, tok_spans[i], T)
                if last_h is not None:
                    hs = last_h[j].cpu()  # [T + 1, H]: last prompt state, then the completion's states
                    h_mean[i], h_ans[i] = pool_states(hs[1 : T + 1], hs[0], tok_spans[i])

    energies = energy_table(rows)

    hidden_mean = hidden_answer = None
    if hidden:
        width = int(getattr(model.config, "hidden_size", 0) or (h_mean[0].shape[0] if n else 0))
        hidden_mean = np.stack(h_mean).astype(np.float32) if n else np.zeros((0, width), np.float32)
        hidden_answer = np.stack(h_ans).astype(np.float32) if n else np.zeros((0, width), np.float32)

    return ScoreResult(
        energies=energies,
        hidden_mean=hidden_mean,
        hidden_answer=hidden_answer,
        seconds=time.perf_counter() - t0,
        n_tokens=np.array([len(c) for c in comp_ids], dtype=np.int64),
        answer_token_spans=tok_spans,
    )


def _answer_spans(graded: pd.DataFrame) -> list[tuple[int, int] | None]:
    return [
        None if pd.isna(s) or pd.isna(e) else (int(s), int(e))
        for s, e in zip(graded["answer_start"], graded["answer_end"])
    ]


def score_table(
    model: Any, tokenizer: Any, graded: pd.DataFrame, prompts: pd.DataFrame, batch_size: int, hidden: bool,
    progress: bool,
) -> tuple[pd.DataFrame, dict[str, Any], float]:
    """Teacher-forced energies of a graded candidates table against its persisted prompts.

    Returns the energies table (problem_id, sample_idx, energy and flag columns), the pooled
    hidden states keyed like the table (``problem_id``, ``sample_idx``, ``hidden_mean``,
    ``hidden_answer``) and the forward-pass seconds.
    """
    prompt_of = dict(zip(prompts["problem_id"], prompts["prompt"]))
    missing = set(graded["problem_id"]) - set(prompt_of)
    if missing:
        raise ValueError(f"{len(missing)} candidates' problems have no prompt, e.g. {sorted(missing)[:3]}; "
                         "rerun the sampling stage")
    scored = score_candidates(
        model, tokenizer, prompts=[prompt_of[p] for p in graded["problem_id"]],
        completions=graded["completion"].tolist(), answer_spans=_answer_spans(graded),
        batch_size=batch_size, hidden=hidden, progress=progress,
    )
    table = scored.energies.reset_index(drop=True)
    table.insert(0, "problem_id", graded["problem_id"].to_numpy())
    table.insert(1, "sample_idx", graded["sample_idx"].to_numpy())
    states = {"problem_id": graded["problem_id"].to_numpy(), "sample_idx": graded["sample_idx"].to_numpy(),
              "hidden_mean": scored.hidden_mean, "hidden_answer": scored.hidden_answer}
    return table, states, scored.seconds
