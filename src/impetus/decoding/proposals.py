"""MH proposals from the base model that reuse the chain's KV cache and recorded values.

A proposal keeps a chain state's first ``t`` tokens and regenerates the rest with the model at
temperature ``1/α`` without truncation (the derivation in :mod:`impetus.decoding.mh` needs the
model's own conditional, tempered for the power target, whose normalisers the sampler records as
``lse_temp``: :func:`trace_log_norm`), the answer's total length capped as the sampler caps any answer. The state is
an :class:`impetus.lm.trace.Trace`: the sampler continues from its KV cache cropped to the kept
prefix (no re-encoding of prompt + prefix) and the new state's energies come from the recorded
values, so no proposal costs a teacher-forced pass. Models whose cache cannot be continued
(sliding-window layers, :meth:`impetus.lm.sampler.ContinuingSampler.can_continue` False) re-encode
prompt + prefix per proposal instead; nothing else changes. Only the
:class:`impetus.lm.sampler.ContinuingSampler` protocol is used, never a backend class.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from impetus.lm.sampler import ContinuingSampler, SamplingParams, encode_items
from impetus.lm.trace import Trace, continued, cut_at_stop


def log_norms(lse: Sequence[float], lse_temp: Sequence[float] | None, n: int, ended: bool, alpha: float,
              cap: int) -> np.ndarray:
    """``log Z_i = lse_temp_i − α·lse_i`` of each step that produced an answer of ``n`` tokens at
    temperature 1/α: one per token, plus the ending step when the model ``ended`` it below the length
    cap (an answer at ``n == cap`` was ended by the cap, with no ending step)."""
    if lse_temp is None:
        raise ValueError("no tempered log-normalisers (lse_temp): the backend did not record them")
    m = n + 1 if ended and n < cap else n
    return np.asarray(lse_temp[:m], float) - alpha * np.asarray(lse[:m], float)


def trace_log_norm(trace: Trace, alpha: float, cap: int) -> np.ndarray:
    """:func:`log_norms` of a complete trace: the :data:`impetus.decoding.mh.LogNorm` of a power-target
    chain. Exact for answers ended by EOS or a one-token stop string; for a longer stop string the steps
    after its first token are left out."""
    return log_norms(trace.lse, trace.lse_temp, len(trace), True, alpha, cap)


def trace_log_weight(trace: Trace, finished: bool, alpha: float, cap: int) -> float:
    """``Σ log Z_i`` over the steps that produced ``trace`` so far (:func:`log_norms`; the ending step
    only when ``finished``): Power-SMC's particle weight toward ``p^α`` (:data:`impetus.decoding.smc.LogWeight`)."""
    return float(log_norms(trace.lse, trace.lse_temp, len(trace), finished, alpha, cap).sum())


def trace_token_logq(trace: Trace, t: int, temperature: float) -> float:
    """``log q(y_t | x, y_<t) = f_t[y_t]/T − logsumexp(f_t/T)`` from the recorded raw logit and tempered
    log-normaliser: the :data:`impetus.decoding.mh.TokenLogQ` of the differing kernel."""
    if trace.lse_temp is None:
        raise ValueError("this trace has no tempered log-normalisers (lse_temp): its backend did not record them")
    return float(trace.tok_logit[t]) / temperature - float(trace.lse_temp[t])


class Proposer:
    """``proposer(states, cuts) -> new states`` (a :data:`impetus.decoding.mh.Propose`).

    Chain ``c`` answers prompt ``prompts[c]`` (token ids); chains of many problems are proposed in
    one batch, so the model decodes many rows per forward (a forward costs about as much for 2
    rows as for 60 on a CPU: reading the weights dominates). Chain ``c``'s proposal at its ``s``-th
    call is seeded with ``seeds[c] + s``, so it does not depend on the other chains.
    """

    def __init__(self, sampler: ContinuingSampler, tokenizer: Any, params: SamplingParams, prompts: list[list[int]],
                 seeds: list[int]):
        if params.temperature <= 0 or params.top_p != 1.0:
            raise ValueError("MH proposals must sample the model's own (tempered) conditional: temperature > 0, "
                             "top_p 1")
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} chains' prompts but {len(seeds)} seeds")
        self.sampler, self.tok, self.params = sampler, tokenizer, params
        self.prompts, self.seeds = [list(p) for p in prompts], list(seeds)
        self.reuse_cache = bool(sampler.can_continue())
        self.calls = 0
        self.rounds: dict[int, int] = {}  # extend() calls per chain

    def start(self, answers: list[list[int]]) -> list[Trace]:
        """Chain starts from given answers: teacher-forced passes (the only ones), the chains' prompts
        together where the backend can (:func:`impetus.lm.sampler.encode_items`)."""
        return encode_items(self.sampler, self.prompts, answers, keep_past=self.reuse_cache,
                            temperature=self.params.temperature)

    def __call__(self, states: list[Trace], cuts: list[int], banned: list[int | None] | None = None) -> list[Trace]:
        """Each state's first ``cuts[c]`` tokens, continued; ``banned[c]``: a token the continuation's
        first step must not pick (the differing kernel)."""
        cap, step = self.params.max_new_tokens, self.calls
        self.calls += 1
        todo = [c for c, t in enumerate(cuts) if t < cap]  # a cut at the cap leaves nothing to regenerate
        out = list(states)
        if not todo:
            return out
        gens = self.sampler.continue_rows(
            [self.prompts[c] + states[c].ids[: cuts[c]] for c in todo], self.params,
            [self.seeds[c] + step for c in todo], max_new=[cap - cuts[c] for c in todo],
            past=[states[c].past for c in todo] if self.reuse_cache else None, keep_past=self.reuse_cache,
            **({"ban": [banned[c] for c in todo]} if banned is not None else {}))
        for c, gen in zip(todo, gens):
            out[c] = cut_at_stop(continued(states[c], cuts[c], gen), self.tok, self.params.stop)
        return out

    def extend(self, rows: list[int], states: list[Trace], block: int) -> list[tuple[Trace, bool]]:
        """Power-SMC's step (:mod:`impetus.decoding.smc`): each state (chain ``rows[i]``) continued by
        up to ``block`` tokens from its end, and whether it is now complete (ended by EOS or a stop
        string, or at the answer's length cap)."""
        cap = self.params.max_new_tokens
        gens = self.sampler.continue_rows(
            [self.prompts[c] + s.ids for c, s in zip(rows, states)], self.params,
            [self.seeds[c] + self.rounds.get(c, 0) for c in rows], max_new=[min(block, cap - len(s)) for s in states],
            past=[s.past for s in states] if self.reuse_cache else None, keep_past=self.reuse_cache)
        out = []
        for c, s, gen in zip(rows, states, gens):
            self.rounds[c] = self.rounds.get(c, 0) + 1  # seeds follow the row's own rounds, not the batch's
            whole = continued(s, len(s), gen)
            new = cut_at_stop(whole, self.tok, self.params.stop)
            finished = gen.finish_reason != "length" or len(new) < len(whole) or len(new) >= cap
            out.append((replace(new, past=None) if finished else new, finished))  # a finished one's cache is freed
        return out
