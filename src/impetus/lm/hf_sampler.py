"""Fast, deterministic, batched sampling with a hand-written decoding loop over a HF causal LM.

Why not ``model.generate``: it decodes a fixed batch until its longest row ends and prefills every
one of the ``n`` copies of a prompt. This loop instead
- prefills each prompt once and gathers its KV cache into its ``n`` rows;
- drops a row from the batch as soon as it hits EOS, a stop string or ``max_new_tokens``
  (index-selecting the KV cache, mask and positions), so short answers do not pay for long ones;
- refills freed slots with pending rows (continuous batching): the new rows are prefilled apart
  and their cache is left-padded to the batch's length (or vice versa) before concatenation;
- samples each row with its own ``torch.Generator`` drawing exactly one uniform per step, so a
  row's tokens depend only on its seed and its own logits, not on which rows share the batch;
- on CPU, keeps the few-shot prefix all the prompts share once, outside the rows' caches, and
  attends to it apart (:mod:`impetus.lm.shared_prefix`): the rows' caches hold their own tokens only.

Cache copies dominate with long prompts, so (a) the KV cache layers (``GrowLayer``) keep spare
room along the sequence and write each new token in place instead of ``torch.cat``-ing it onto the
whole cache, and (b) finished rows are dropped lazily: they stay in the batch as dead slots (no
sampling, no output) until enough of them pile up or a refill happens, and only then is the cache
compacted (one gather, which also trims the now-unused left padding).
"""

from __future__ import annotations

import time
from collections import deque
from contextlib import nullcontext
from typing import Any, Callable

import torch
from torch.profiler import record_function
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from impetus.lm.hf_choices import resolve_layers, score_choices
from impetus.lm.hf_encode import encode_traces, encode_traces_shared
from impetus.lm.kv_cache import (GrowLayer, RowPast, compact_layers, forward, mergeable, out_cache, row_past,
                                 stack_caches, stack_pasts)
from impetus.lm.nucleus import force_tokens
from impetus.lm.nucleus import sample_tokens as _sample_tokens
from impetus.lm.recording import RowRecord, last_state_hook, layer_state_hook, tempered_lse
from impetus.lm.rows import AnswerSpan, CallOptions, Row, advance, first_bans, pooled_record
from impetus.lm.sampler import Generation, ProgressFn, Prompt, Resample, SamplingParams, encode_per_prompt, row_seed
from impetus.lm.shared_prefix import ATTENTION, distinct, prefix_of_pasts, shared_len, shared_prefix
from impetus.lm.trace import Trace

class HFSampler:
    """Sampler backend for a (CPU or GPU) Hugging Face causal LM; see the module docstring.

    Registered as ``"hf"`` by import path in ``impetus.lm.sampler`` (no import back from here)."""

    name = "hf"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        refill_fraction: float = 0.25,
        min_shared_prefix: int = 16,
        compact_fraction: float = 0.125,
        record: bool = True,
        hidden_layers: tuple[int | str, ...] = (),
        share_prefix: bool = True,
    ) -> None:
        self.model = model
        # Further layers whose states are pooled (``model.hidden_layers``; "mid" = the middle block), for
        # scored choices and, while recording, for sampled rows too.
        self.layers = resolve_layers(hidden_layers, model.config.get_text_config().num_hidden_layers)
        # Record raw-logit statistics and last-layer states while decoding (impetus.lm.recording),
        # so the energies need no second, teacher-forced pass.
        self.record = record
        # Shared prompt prefixes shorter than this are prefilled per prompt (not worth a forward).
        self.min_shared_prefix = min_shared_prefix
        self.tok = tokenizer
        # Refill once this fraction of the batch is free: each refill is an extra (prefill) forward,
        # so refilling for every single freed slot would cost more than it saves.
        self.refill_fraction = refill_fraction
        # Finished rows stay in the batch (dead slots) until they are this fraction of it (or a
        # refill comes): each compaction copies the whole cache, each dead slot costs its compute.
        self.compact_fraction = compact_fraction
        eos = getattr(model.generation_config, "eos_token_id", None) or tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        self.device = next(model.parameters()).device
        # generate() keeps the few-shot prefix its prompts share once instead of in every row's cache
        # (impetus.lm.shared_prefix): on CPU, for models whose layers all attend to the whole cache
        # (can_continue) and that run SDPA, whose path the attention takes outside generate().
        self.share_prefix = (share_prefix and self.device.type == "cpu" and self.can_continue()
                             and model.config._attn_implementation in ("sdpa", ATTENTION))
        if self.share_prefix:
            model.set_attn_implementation(ATTENTION)

    # ------------------------------------------- batch primitives (this loop's and hf_particles')
    def compact(
        self, slots: list[Row | None], cache: DynamicCache, mask: torch.Tensor, pos: torch.Tensor,
        logits: torch.Tensor,
    ) -> tuple[DynamicCache, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Drop the dead slots (``None``) from the batch, trimming all-padding leading columns."""
        sel = torch.tensor([i for i, r in enumerate(slots) if r is not None], device=self.device)
        mask, pos, logits = mask[sel], pos[sel], logits[sel]
        if not mergeable(cache):
            cache.batch_select_indices(sel)
            return cache, mask, pos, logits
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        compact_layers(cache, sel, start)
        return cache, mask[:, start:], pos, logits

    def prefill(
        self, prompt_ids: list[list[int]], rows: list[Row], call: CallOptions
    ) -> tuple[DynamicCache, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prefill the distinct prompts of ``rows`` once; gather cache/logits to one entry per row.

        Each prompt is a *head* already in the cache (a given ``past``, or the token prefix all
        the prompts share, prefilled once at batch 1) and a *rest* (at least one token, for its
        logits) fed here; padding sits between head and rest, explicit positions keep RoPE right.
        """
        uniq = list(dict.fromkeys(r.prompt_idx for r in rows))
        seqs = [prompt_ids[p] for p in uniq]
        cache = DynamicCache(config=self.model.config)
        if call.past is not None:  # continuing: the heads are the given caches (past a shared prefix)
            heads = [min(call.past[p][0][0].shape[-2], len(prompt_ids[p]) - 1) for p in uniq]
            cache.layers, head_mask = stack_pasts([call.past[p] for p in uniq], heads, start=call.prefix_len)
        elif call.prefix is not None:  # the call's shared prefix is attended apart: rows cache the rest only
            cache.layers = [GrowLayer() for _ in cache.layers]
            heads, head_mask = [call.prefix_len] * len(seqs), torch.ones((len(seqs), 0), dtype=torch.long)
        else:  # few-shot prompts share a long token prefix: prefill it once
            common = self._shared_len(seqs)
            if all(type(layer) is DynamicLayer for layer in cache.layers):
                cache.layers = [GrowLayer() for _ in cache.layers]  # in-place growth, same semantics
            elif len({len(q) for q in seqs}) > 1:
                # A sliding-window layer's window counts cache columns, so padding between the
                # shared head and a shorter rest would push real head tokens out of that row's
                # window: share the head only when no row needs padding.
                common = 0
            if common:
                self._prefill_head(cache, seqs[0][:common])
                cache.batch_repeat_interleave(len(seqs))
            heads, head_mask = [common] * len(seqs), torch.ones((len(seqs), common), dtype=torch.long)
        rests = [q[n:] for q, n in zip(seqs, heads)]
        width = max(len(q) for q in rests)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        ids = torch.full((len(uniq), width), pad, dtype=torch.long)
        mask = torch.zeros((len(uniq), width), dtype=torch.long)
        for i, rest in enumerate(rests):
            ids[i, width - len(rest):] = torch.tensor(rest)
            mask[i, width - len(rest):] = 1
        pos = (torch.tensor(heads)[:, None] + mask.cumsum(-1) - 1).clamp_(min=0)
        mask = torch.cat([head_mask.cpu(), mask], dim=1).to(self.device)
        out = forward(self.model, cache, input_ids=ids.to(self.device), attention_mask=mask,
                      position_ids=pos.to(self.device), use_cache=True, logits_to_keep=1)
        where = {p: i for i, p in enumerate(uniq)}
        sel = torch.tensor([where[r.prompt_idx] for r in rows], device=self.device)
        cache = out_cache(out)
        state = call.state() if call.record else None
        layer_state = call.layer_state() if call.record else {}
        if state is not None:
            for r, k in zip(rows, sel.tolist()):
                r.rec.prompt_state = state[k]
                r.rec.prompt_layer_state = {layer: h[k] for layer, h in layer_state.items()}
        if uniq != [r.prompt_idx for r in rows]:  # continued rows are one per prompt, in order: no gather
            cache.batch_select_indices(sel)  # gather: the n rows of a prompt share its prefill
        next_pos = torch.tensor([len(prompt_ids[r.prompt_idx]) for r in rows], device=self.device)
        return cache, mask[sel], next_pos, out.logits[:, -1][sel]

    # ----------------------------------------------------------------- main loop
    def generate(
        self, prompts: list[Prompt], params: SamplingParams, seeds: list[int], progress: ProgressFn | None = None,
        first_sample: int = 0, answer_span: AnswerSpan | None = None,
    ) -> list[list[Generation]]:
        """Sample ``params.n`` completions per prompt; see ``Sampler.generate``.

        ``first_sample``: the rows are samples ``first_sample .. first_sample + n - 1`` of each
        prompt (same seeds as in one call of a larger n), so sampling in waves gives a prefix of
        the full-N candidates. ``answer_span(prompt_index, text)``: the answer's character span,
        for the recorded answer-token state (None: the last token's state).
        """
        return self._run(prompts, params, seeds, CallOptions(record=self.record), progress, first_sample, answer_span)

    def continue_rows(
        self, prompts: list[list[int]], params: SamplingParams, seeds: list[int], max_new: list[int],
        past: list[RowPast] | None = None, keep_past: bool = False, forced: list[list[int]] | None = None,
        ban: list[int | None] | None = None,
    ) -> list[Generation]:
        """One recorded row per token-id prompt; see ``ContinuingSampler.continue_rows``. ``past[i]``
        is a KV cache of prompt ``i``'s first tokens (a ``Generation.past``): only the rest is encoded."""
        if params.n != 1:
            raise ValueError(f"continue_rows samples one row per prompt, got n={params.n}")
        if (past is not None or keep_past) and not self.can_continue():
            raise ValueError(f"{type(self.model).__name__} has cache layers other than full attention; "
                             "continuing from a given KV cache is not supported for it")
        if forced is not None and len(forced) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(forced)} forced token lists")
        if ban is not None and (len(ban) != len(prompts) or forced is not None):
            raise ValueError(f"got {len(prompts)} prompts but {len(ban)} banned tokens" if len(ban) != len(prompts)
                             else "ban= and forced= cannot be combined (the first step is forced)")
        call = CallOptions(record=True, past=past, keep_past=keep_past, keep_states=True, forced=forced, ban=ban)
        return [g for (g,) in self._run(prompts, params, seeds, call, max_new=max_new)]

    def score_choices(self, contexts: list[str], continuations: list[list[str]],
                      progress: ProgressFn | None = None) -> list[list[Generation]]:
        """Choices as candidates (:func:`impetus.lm.hf_choices.score_choices`)."""
        return score_choices(self.model, self.tok, contexts, continuations, self.layers, progress)

    def can_continue(self) -> bool:
        """Whether ``continue_rows(past=...)`` works: every cache layer is plain full attention."""
        return all(type(layer) is DynamicLayer for layer in DynamicCache(config=self.model.config).layers)

    def encode_answers(self, prompt: list[int], answers: list[list[int]], keep_past: bool,
                       temperature: float = 1.0) -> list[Trace]:
        """Traces of given answers after ``prompt`` (:func:`impetus.lm.hf_encode.encode_traces`)."""
        return encode_traces(self.model, self.tok, list(prompt), answers, keep_past=keep_past, temperature=temperature,
                             layers=self.layers)

    def encode_many(self, prompts: list[list[int]], answers: list[list[int]], keep_past: bool,
                    temperature: float = 1.0) -> list[Trace]:
        """Traces of ``answers[i]`` after ``prompts[i]`` (:func:`impetus.lm.sampler.encode_items`): the
        few-shot prefix the prompts share encoded once and attended apart, several prompts per pass
        (:func:`impetus.lm.hf_encode.encode_traces_shared`); without one, ``encode_answers`` per prompt."""
        prompts = [list(p) for p in prompts]
        n, prefix = self._shared_prefix(prompts) if self.share_prefix and answers else (0, None)
        if prefix is None:
            return encode_per_prompt(self, prompts, answers, keep_past, temperature)
        return encode_traces_shared(self.model, self.tok, prompts, answers, prefix, n, keep_past=keep_past,
                                    temperature=temperature, layers=self.layers)

    def sample_particles(self, prompts: list[list[int]], params: SamplingParams, seeds: list[list[int]], block: int,
                         resample: Resample, on_done: Callable[[int], None] | None = None) -> list[list[Generation]]:
        """Power-SMC's particles in one decoding loop (:func:`impetus.lm.hf_particles.sample_particles`)."""
        from impetus.lm.hf_particles import sample_particles

        return sample_particles(self, prompts, params, seeds, block, resample, on_done)

    def state_logits(self, states: torch.Tensor) -> torch.Tensor:
        """The logits the model's forward makes of given last-layer states (differentiable): the LM
        head, then Gemma 2's final logit soft-capping ``cap * tanh(logits / cap)`` where the config
        sets it (arXiv:2408.00118, Sec. 2), so V2 decodes the distribution the model samples from."""
        logits = self.model.get_output_embeddings()(states)
        cap = getattr(self.model.config.get_text_config(), "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    @torch.inference_mode()
    def _run(
        self, prompts: list[Prompt], params: SamplingParams, seeds: list[int], call: CallOptions,
        progress: ProgressFn | None = None, first_sample: int = 0, answer_span: AnswerSpan | None = None,
        max_new: list[int] | None = None,
    ) -> list[list[Generation]]:
        layers = self.layers if call.record else []
        with last_state_hook(self.model) if call.record else nullcontext(lambda: None) as state, \
                layer_state_hook(self.model, layers) as layer_state:
            call.state, call.layer_state = state, layer_state
            prompt_ids = [list(p) if isinstance(p, (list, tuple)) else self.tok(p)["input_ids"] for p in prompts]
            if self.share_prefix:
                call.prefix_len, call.prefix = (self._shared_prefix(prompt_ids) if call.past is None
                                                else self._past_prefix(prompt_ids, call.past))
            with shared_prefix(call.prefix):
                return self._generate(prompt_ids, params, seeds, call, progress, first_sample, answer_span, max_new)

    def _shared_prefix(self, prompt_ids: list[list[int]]) -> tuple[int, DynamicCache | None]:
        """The token prefix all the prompts share (:meth:`_shared_len`) and its cache, prefilled once."""
        seqs = distinct(prompt_ids)
        n = self._shared_len(seqs)
        if not n:
            return 0, None
        prefix = DynamicCache(config=self.model.config)
        self._prefill_head(prefix, seqs[0][:n])
        return n, prefix

    def _past_prefix(self, prompt_ids: list[list[int]], pasts: list[RowPast]) -> tuple[int, DynamicCache | None]:
        """Continuing rows: their prompts' shared prefix within every given cache, viewed from the first
        (:func:`impetus.lm.shared_prefix.prefix_of_pasts`)."""
        n = min([self._shared_len(distinct(prompt_ids))] + [p[0][0].shape[-2] for p in pasts])
        return (n, prefix_of_pasts(self.model.config, pasts, n)) if n >= self.min_shared_prefix else (0, None)

    def _shared_len(self, seqs: list[list[int]]) -> int:
        """:func:`impetus.lm.shared_prefix.shared_len` at ``min_shared_prefix``."""
        return shared_len(seqs, self.min_shared_prefix)

    def _prefill_head(self, cache: DynamicCache, ids: list[int]) -> None:
        """One batch-1 forward of the shared tokens ``ids`` into ``cache``, from position 0."""
        forward(self.model, cache, input_ids=torch.tensor([ids], device=self.device),
                position_ids=torch.arange(len(ids), device=self.device)[None], use_cache=True, logits_to_keep=1)

    def _generate(
        self, prompt_ids: list[list[int]], params: SamplingParams, seeds: list[int], call: CallOptions,
        progress: ProgressFn | None, first_sample: int, answer_span: AnswerSpan | None, max_new: list[int] | None,
    ) -> list[list[Generation]]:
        if not (len(seeds) == len(prompt_ids) == len(max_new or prompt_ids) == len(call.past or prompt_ids)):
            raise ValueError(f"got {len(prompt_ids)} prompts but {len(seeds)} seeds"
                             + (f", {len(max_new)} caps" if max_new is not None else "")
                             + (f", {len(call.past)} caches" if call.past is not None else ""))
        if not prompt_ids:
            return []
        if any(len(p) == 0 for p in prompt_ids):
            raise ValueError("empty prompt (no tokens); the model needs at least one token to condition on")
        pending: deque[Row] = deque()
        for i, s in enumerate(seeds):
            for j in range(first_sample, first_sample + params.n):
                g = torch.Generator().manual_seed(row_seed(s, j))
                cap = params.max_new_tokens if max_new is None else int(max_new[i])
                pending.append(Row(prompt_idx=i, sample_idx=j, gen=g, rec=RowRecord() if call.record else None,
                                    cap=cap, forced=list(call.forced[i]) if call.forced else [],
                                    ban=call.ban[i] if call.ban else None))
        all_rows = list(pending)
        bs = params.batch_size
        refill_at = max(1, int(bs * self.refill_fraction))
        compact_at = max(1, int(bs * self.compact_fraction))
        # slots[i] is the row in batch position i, or None for a finished row not yet dropped
        slots: list[Row | None] = []
        live = 0
        cache: DynamicCache | None = None
        mask = pos = logits = None
        max_stop = max((len(s) for s in params.stop), default=0)

        while pending or live:
            free = bs - live
            can_merge = cache is None or not live or mergeable(cache)
            refill = pending and can_merge and (not live or free >= min(refill_at, len(pending)))
            dead = len(slots) - live
            if dead and (refill or dead >= compact_at or not mergeable(cache)):
                with record_function("impetus.cache"):
                    cache, mask, pos, logits = self.compact(slots, cache, mask, pos, logits)
                slots = [r for r in slots if r is not None]
            if refill:
                new = [pending.popleft() for _ in range(min(free, len(pending)))]
                t0 = time.perf_counter()
                with record_function("impetus.prefill"):
                    c2, m2, p2, l2 = self.prefill(prompt_ids, new, call)
                dt = (time.perf_counter() - t0) / len(new)
                for r in new:
                    r.seconds += dt
                if not slots:
                    cache, mask, pos, logits = c2, m2, p2, l2
                else:  # align cache lengths with left padding, then stack the rows
                    with record_function("impetus.cache"):
                        mask = stack_caches(cache, mask, c2, m2)
                    pos, logits = torch.cat([pos, p2]), torch.cat([logits, l2])
                slots = slots + new
                live += len(new)

            idx = [i for i, r in enumerate(slots) if r is not None]
            rows: list[Row] = [slots[i] for i in idx]  # type: ignore[misc]
            lg = logits if len(idx) == len(slots) else logits[torch.tensor(idx, device=logits.device)]
            with record_function("impetus.nucleus"):
                toks, lps, stats = _sample_tokens(lg, rows, float(params.temperature), float(params.top_p), call.record,
                                                  first_bans(rows, lg.device))
            if call.forced:
                force_tokens(lg, rows, toks, lps, stats)
            stats = stats.tolist() if stats is not None else [None] * len(rows)
            done, tails = 0, {}
            for i, r, t, lp, st in zip(idx, rows, toks.tolist(), lps.tolist(), stats):
                end = advance(self.tok, r, t, lp, st, self.eos_ids, params.stop, max_stop)
                if end is None:
                    continue
                if end == "length" and call.record:  # one more forward of its last token gives lse after it
                    tails[i] = r
                if call.keep_past:  # the cache holds the prompt and every token but this step's
                    r.past = row_past(cache.layers, mask, i, call.prefix.layers if call.prefix is not None else None)
                slots[i] = None
                done += 1
            if progress is not None:
                progress(len(rows), done)
            live -= done
            if not live and not tails:
                cache, slots = None, []
                continue
            if len(idx) < len(slots):  # dead slots get a dummy token (their outputs are ignored)
                full = toks.new_zeros(len(slots))
                full[torch.tensor(idx, device=toks.device)] = toks
                toks = full

            t0 = time.perf_counter()
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            with record_function("impetus.forward"):
                out = forward(self.model, cache, input_ids=toks[:, None].to(self.device), attention_mask=mask,
                              position_ids=pos[:, None], use_cache=True)
            cache, logits = out_cache(out), out.logits[:, -1]
            pos = pos + 1
            served = [(k, r) for k, r in enumerate(slots) if r is not None] + list(tails.items())
            dt = (time.perf_counter() - t0) / len(served)
            state = call.state() if call.record else None
            layer_state = call.layer_state() if call.record else {}
            for k, r in served:
                r.seconds += dt
                if state is not None:
                    r.rec.states.append(state[k])
                for layer, h in layer_state.items():
                    r.rec.layer_states.setdefault(layer, []).append(h[k])
            if tails:
                rows_logits = logits[torch.tensor(list(tails), device=logits.device)].float()
                tail_lse = torch.logsumexp(rows_logits, dim=-1)
                tail_t = tempered_lse(rows_logits, float(params.temperature))
                for r, v, vt in zip(tails.values(), tail_lse.tolist(), tail_t.tolist()):
                    r.rec.lse.append(v)
                    r.rec.lse_temp.append(vt)
            if not live:
                cache, slots = None, []

        results: list[list[Generation]] = [[] for _ in prompt_ids]
        for r in all_rows:
            r.result.seconds = r.seconds  # includes a tail forward after the row finished
            if r.rec is not None:
                r.result.record = pooled_record(self.tok, r, answer_span, call.keep_states)
            r.result.past = r.past
            results[r.prompt_idx].append(r.result)
        return results
