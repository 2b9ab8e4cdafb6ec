"""MH proposals from the base model that reuse the chain's KV cache and recorded values.

A proposal keeps a chain state's first ``t`` tokens and regenerates the rest with the model at
temperature 1 without truncation (the derivation in :mod:`impetus.decoding.mh` needs the model's
own conditional), the answer's total length capped as the sampler caps any answer. The state is
an :class:`impetus.lm.trace.Trace`: the sampler continues from its KV cache cropped to the kept
prefix (no re-encoding of prompt + prefix) and the new state's energies come from the recorded
values, so no proposal costs a teacher-forced pass. Models whose cache cannot be continued
(sliding-window layers, :meth:`impetus.lm.hf_sampler.HFSampler.can_continue`) re-encode
prompt + prefix per proposal instead; nothing else changes.
"""

from __future__ import annotations

import itertools
from typing import Any

from impetus.lm.sampler import SamplingParams
from impetus.lm.trace import Trace, continued, cut_at_stop, encode_traces


class Proposer:
    """``proposer(states, cuts) -> new states`` for one problem's chains (a :data:`mh.Propose`)."""

    def __init__(self, sampler: Any, tokenizer: Any, prompt_ids: list[int], params: SamplingParams, seed: int):
        if params.temperature != 1.0 or params.top_p != 1.0:
            raise ValueError("MH proposals must sample the model's own conditional: temperature 1, top_p 1")
        self.sampler, self.tok, self.prompt_ids, self.params = sampler, tokenizer, list(prompt_ids), params
        self.reuse_cache = bool(getattr(sampler, "can_continue", lambda: False)())
        self._seeds = itertools.count(seed)

    def start(self, answers: list[list[int]]) -> list[Trace]:
        """Chain starts from given answers (one teacher-forced pass, the only one)."""
        return encode_traces(self.sampler.model, self.tok, self.prompt_ids, answers, keep_past=self.reuse_cache)

    def __call__(self, states: list[Trace], cuts: list[int]) -> list[Trace]:
        cap = self.params.max_new_tokens
        todo = [c for c, t in enumerate(cuts) if t < cap]  # a cut at the cap leaves nothing to regenerate
        out = list(states)
        if not todo:
            return out
        kw: dict[str, Any] = {"past": [states[c].past for c in todo], "keep_past": True} if self.reuse_cache else {}
        gens = self.sampler.generate(
            [self.prompt_ids + states[c].ids[: cuts[c]] for c in todo], self.params,
            [next(self._seeds) for _ in todo], max_new=[cap - cuts[c] for c in todo], keep_states=True, **kw)
        for c, (gen,) in zip(todo, gens):
            out[c] = cut_at_stop(continued(states[c], cuts[c], gen), self.tok, self.params.stop)
        return out
