"""Power-SMC: particles grown block by block toward p_LM^α, tilted by exp(−E/τ) at the end.

After Power-SMC (arXiv:2602.10273): instead of MH chains that start from finished answers, ``P``
particles per problem grow from the prompt one block of ``B`` tokens at a time, each token drawn
from the model at temperature ``1/α``, ``q_i(v) = p_i(v)^α / Z_i``, and the particles are resampled
at block boundaries toward the power distribution. The derivation below is ours.

**Weights.** For a complete answer ``y`` (ended by EOS, a stop string or the length cap, as the
sampler ends it) the importance weight toward ``p_LM(y|x)^α`` is

    p(y|x)^α / q(y|x) = Π_i p_i(y_i)^α / (p_i(y_i)^α / Z_i) = Π_i Z_i,

the product over every step that produced it (its tokens and, when the model ended it, the ending
step): the same normalisers ``log Z_i = logsumexp(α f_i) − α·logsumexp(f_i)`` the power-target MH
uses (:func:`impetus.decoding.proposals.trace_log_norm`), recorded while decoding. A partial answer
carries the product over its tokens so far, so the weight a block adds is the product over the
block's steps: the intermediate targets are ``p(y_<t|x)^α``, the prefix's own power (not the
marginal of ``p^α`` over completions, which no one can compute; any intermediate targets leave the
final weights exact, they only steer which prefixes survive). α = 1 makes every ``Z_i = 1``: plain
sampling, resampling never triggered, and the tilt below is all that acts.

**Resampling.** After each block, a problem's particles are resampled (systematic resampling) when
their effective sample size ``(Σw)² / Σw²`` falls below :data:`RESAMPLE_ESS` of ``P``; the weights
then restart at 1. Finished particles keep their answer and weight and take part (a good finished
answer can be copied, a poor one dropped); the run ends when every particle has finished.

**Tilt.** The final weights are multiplied by ``exp(−E(y)/τ)``: the weighted particles then
approximate ``π(y) ∝ p(y|x)^α e^{−E(y)/τ}``, EBD's target (:mod:`impetus.decoding.mh`). Two answers
per problem, as EBD reports them: the lowest-energy particle, and the majority over the particles
after one more systematic resampling by the tilted weights (a vote weighted by them).

The result is a :class:`impetus.decoding.mh.Chains` (one "chain" per particle slot: its answer
before and after the tilt's resampling), so EBD's answers, token accounting and reports serve both
samplers. The weights and resampling are kept by a :class:`Book`, whoever grows the particles: a
:class:`impetus.lm.sampler.ParticleSampler` in its own decoding loop (one batch cache whose rows are
copied by ancestor, :mod:`impetus.lm.hf_particles`; :func:`run_smc_problems`' default), or any
:class:`impetus.lm.sampler.ContinuingSampler` one block at a time through ``continue_rows``
(:func:`run_smc` with :meth:`impetus.decoding.proposals.Proposer.extend`), which gives the same
particles (tested) at the cost of copying every particle's cache out of the batch and back at each block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np

from impetus.decoding.mh import Chains, token_ids
from impetus.decoding.proposals import Proposer, log_norms, trace_log_weight
from impetus.lm.runner import stable_seed
from impetus.lm.sampler import ContinuingSampler, Particle, ParticleSampler, SamplingParams, row_seed
from impetus.lm.trace import generated_trace

#: Resample a problem's particles when their effective sample size falls below this share of them:
#: the usual adaptive rule (resampling at every block would add noise while the weights are even).
RESAMPLE_ESS = 0.5

#: ``extend(particles, states) -> [(state, finished)]``: each state (of particle index ``particles[i]``)
#: continued by one block from its end; finished: ended by the model or the length cap.
Extend = Callable[[list[int], list[Any]], list[tuple[Any, bool]]]
#: ``log_weight(state, finished) -> Σ log Z_i`` over the steps that produced it (the ending step too
#: when ``finished`` and the model ended it).
LogWeight = Callable[[Any, bool], float]


@dataclass
class SMCStats:
    """Per problem: how often its particles were resampled, and the tilted weights' ESS share at the end."""

    resamples: int
    final_ess: float


def ess_share(log_w: np.ndarray) -> float:
    """``(Σw)² / (n·Σw²)`` of weights given as logs: 1 for even weights, 1/n for one particle."""
    w = np.exp(log_w - np.max(log_w))
    return float(w.sum() ** 2 / (len(w) * np.sum(w ** 2)))


def systematic(log_w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Ancestor indices by systematic resampling (one uniform; each particle is copied
    ⌊n·w⌋ or ⌈n·w⌉ times): the lowest-variance of the standard schemes."""
    w = np.exp(log_w - np.max(log_w))
    cdf = np.cumsum(w / w.sum())
    cdf[-1] = 1.0
    n = len(log_w)
    return np.searchsorted(cdf, (rng.random() + np.arange(n)) / n, side="right").clip(0, n - 1)


class Book:
    """Each particle's Σ log Z so far, its weight since its problem's last resampling, its tokens and
    whether it has finished, kept apart from whoever grows the particles (:func:`run_smc`'s blocks
    through ``extend``, or a :class:`impetus.lm.sampler.ParticleSampler`'s own loop), so both
    resample alike. ``rngs[owner]``: each problem's resampling generator."""

    def __init__(self, owners: Sequence[Any], rngs: dict[Any, np.random.Generator]):
        owners = list(owners)
        self.groups = {o: np.array([c for c, x in enumerate(owners) if x == o]) for o in dict.fromkeys(owners)}
        self.rngs = rngs
        self.done = np.zeros(len(owners), bool)
        self.cum = np.zeros(len(owners))  # Σ log Z so far
        self.log_w = np.zeros(len(owners))  # the weight since the problem's last resampling
        self.n = np.zeros(len(owners), int)  # tokens
        self.proposed = np.zeros(len(owners), int)  # tokens each particle slot decoded
        self.resamples = dict.fromkeys(self.groups, 0)

    def observe(self, o: Any, cum: Sequence[float], n_tokens: Sequence[int], finished: Sequence[bool]
                ) -> np.ndarray | None:
        """Problem ``o``'s particles after a block: each one's Σ log Z, tokens and whether it has
        finished. Resamples them (systematic) when their ESS share falls below :data:`RESAMPLE_ESS`
        and some are unfinished; returns the ancestors (indices within the problem), or None."""
        idx = self.groups[o]
        self.proposed[idx] += np.asarray(n_tokens, int) - self.n[idx]
        self.log_w[idx] += np.asarray(cum, float) - self.cum[idx]
        self.cum[idx], self.n[idx], self.done[idx] = cum, n_tokens, finished
        if self.done[idx].all() or ess_share(self.log_w[idx]) >= RESAMPLE_ESS:
            return None
        local = systematic(self.log_w[idx], self.rngs[o])
        anc = idx[local]
        self.done[idx], self.cum[idx], self.n[idx] = self.done[anc], self.cum[anc], self.n[anc]
        self.log_w[idx] = 0.0
        self.resamples[o] += 1
        return local

    def tilt(self, states: list[Any], e: np.ndarray, tau: float) -> tuple[Chains, dict[Any, SMCStats]]:
        """The finished particles as chains: each slot's answer, then the one a systematic resampling
        by the tilted weights ``w · exp(−E/τ)`` put there (what ``ebd_vote`` votes over)."""
        chains = Chains(states=[], energies=[], accepted=[[] for _ in states], proposed=[int(p) for p in self.proposed])
        stats = {}
        after = np.arange(len(states))
        for o, idx in self.groups.items():
            tilted = self.log_w[idx] - e[idx] / tau
            after[idx] = idx[systematic(tilted, self.rngs[o])]
            stats[o] = SMCStats(self.resamples[o], ess_share(tilted))
        for c, a in enumerate(after):
            chains.states.append([token_ids(states[c]), token_ids(states[a])])
            chains.energies.append([float(e[c]), float(e[a])])
        return chains, stats


def run_smc(
    start: Callable[[Any], Any], owners: Sequence[Any], extend: Extend, log_weight: LogWeight,
    energy: Callable[[list[Any]], np.ndarray], tau: float, rngs: dict[Any, np.random.Generator],
    max_rows: int | None = None, on_done: Callable[[int], None] | None = None,
) -> tuple[Chains, dict[Any, SMCStats]]:
    """Power-SMC over particles ``c`` of problems ``owners[c]``, each problem's particles starting
    from ``start(owner)`` (an empty answer after its prompt). Each round extends every unfinished
    particle of the running problems by one block in one batch; problems start in order whenever
    their particles fit under ``max_rows`` unfinished rows (None: all at once), so the batch stays
    full while problems finish (a problem's particles are extended together, never split).
    ``rngs[owner]``: each problem's resampling generator, so with an ``extend`` seeded per particle a
    problem's particles do not depend on which problems share a round. ``on_done(k)``: k problems
    finished this round. Returns the particles as chains (answer before and after the tilt's
    resampling) and each problem's :class:`SMCStats`."""
    if tau <= 0:
        raise ValueError(f"need tau > 0, got {tau}")
    book = Book(owners, rngs)
    groups = book.groups
    states: list[Any] = [None] * len(book.done)
    waiting, running = list(groups), []
    while waiting or running:
        rows = sum(int((~book.done[groups[o]]).sum()) for o in running)
        while waiting and (not running or max_rows is None or rows + len(groups[waiting[0]]) <= max_rows):
            o = waiting.pop(0)
            s0 = start(o)
            for c in groups[o]:
                states[c] = s0
            running.append(o)
            rows += len(groups[o])
        todo = [int(c) for o in running for c in groups[o] if not book.done[c]]
        cum, n, done = book.cum.copy(), book.n.copy(), book.done.copy()
        for c, (state, finished) in zip(todo, extend(todo, [states[c] for c in todo])):
            states[c], cum[c], n[c], done[c] = state, float(log_weight(state, finished)), len(token_ids(state)), finished
        for o in running:
            idx = groups[o]
            local = book.observe(o, cum[idx], n[idx], done[idx])
            if local is not None:
                for c, state in zip(idx, [states[a] for a in idx[local]]):  # read every ancestor before writing
                    states[c] = state
        still = [o for o in running if not book.done[groups[o]].all()]
        if on_done is not None:
            on_done(len(running) - len(still))
        running = still
    return book.tilt(states, np.asarray(energy(states), float), tau)


def run_smc_problems(
    sampler: ContinuingSampler, tokenizer: Any, params: SamplingParams, prompts: list[list[int]],
    energy: Callable[[list[int], list], np.ndarray], particles: int, block: int, alpha: float, tau: float, seed: int,
    keys: list[Any], progress: bool = False, in_loop: bool = True,
) -> tuple[list[Chains], list[SMCStats], bool]:
    """Power-SMC on every problem (prompt ids ``prompts[k]``, seeds from ``keys[k]``): ``particles``
    each, grown from the prompt in blocks of ``block`` tokens at ``params.temperature`` (``1/alpha``);
    ``energy(owners, states)`` scores the finished particles (``owners[i]``: state ``i``'s problem
    index). Up to ``params.batch_size`` particles decode together, problems joining as others
    finish; each particle is seeded by its slot and its own blocks, as the sampler seeds a
    problem's rows, so a problem's particles do not depend on the batch. A
    :class:`impetus.lm.sampler.ParticleSampler` grows them in its own loop (``in_loop``); any other
    backend, block by block through ``continue_rows`` (:func:`run_smc`), with the same particles.
    Returns the chains, each problem's :class:`SMCStats`, and whether the KV caches were reused."""
    if tau <= 0:
        raise ValueError(f"need tau > 0, got {tau}")
    owners = [k for k in range(len(prompts)) for _ in range(particles)]
    seeds = [row_seed(stable_seed(seed, keys[k]), j) for k in range(len(prompts)) for j in range(particles)]
    rngs = {k: np.random.default_rng([seed, k]) for k in range(len(prompts))}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts), unit="problem", desc=f"Power-SMC: {particles} particles per problem")
    on_done = bar.update if bar is not None else None
    if in_loop and isinstance(sampler, ParticleSampler):
        book, cap = Book(owners, rngs), params.max_new_tokens

        def resample(k: int, views: list[Particle]) -> np.ndarray | None:
            return book.observe(k, [float(log_norms(v.lse, v.lse_temp, v.n_tokens, v.finished, alpha, cap).sum())
                                    for v in views],
                                [v.n_tokens for v in views], [v.finished for v in views])

        gens = sampler.sample_particles(prompts, replace(params, n=particles),
                                        [seeds[k * particles: (k + 1) * particles] for k in range(len(prompts))],
                                        block, resample, on_done)
        states = [generated_trace(g) for gs in gens for g in gs]
        every, by_owner = book.tilt(states, np.asarray(energy(owners, states), float), tau)
        reuse = True
    else:
        every, by_owner, reuse = _by_blocks(sampler, tokenizer, params, prompts, energy, owners, seeds, rngs, block,
                                            alpha, tau, on_done)
    if bar is not None:
        bar.close()
    chains = [every.subset([c for c, o in enumerate(owners) if o == k]) for k in range(len(prompts))]
    return chains, [by_owner[k] for k in range(len(prompts))], reuse


def _by_blocks(sampler: ContinuingSampler, tokenizer: Any, params: SamplingParams, prompts: list[list[int]],
               energy: Callable[[list[int], list], np.ndarray], owners: list[int], seeds: list[int],
               rngs: dict[Any, np.random.Generator], block: int, alpha: float, tau: float,
               on_done: Callable[[int], None] | None) -> tuple[Chains, dict[Any, SMCStats], bool]:
    """:func:`run_smc` through ``continue_rows`` (:meth:`impetus.decoding.proposals.Proposer.extend`),
    each problem's particles starting from its encoded prompt."""
    propose = Proposer(sampler, tokenizer, params, [prompts[k] for k in owners], seeds)

    def start(k: int) -> Any:
        return sampler.encode_answers(prompts[k], [[]], keep_past=propose.reuse_cache,
                                      temperature=params.temperature)[0]

    every, by_owner = run_smc(start, owners, partial(propose.extend, block=block),
                              partial(trace_log_weight, alpha=alpha, cap=params.max_new_tokens), partial(energy, owners),
                              tau, rngs, max_rows=params.batch_size, on_done=on_done)
    return every, by_owner, propose.reuse_cache
