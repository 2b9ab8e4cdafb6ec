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
samplers. :func:`run_smc` reaches the model only through ``extend``; :func:`run_smc_problems` makes it
from a :class:`impetus.lm.sampler.ContinuingSampler` (:meth:`impetus.decoding.proposals.Proposer.extend`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from impetus.decoding.mh import Chains, token_ids
from impetus.decoding.proposals import Proposer, trace_log_weight
from impetus.lm.runner import stable_seed
from impetus.lm.sampler import ContinuingSampler, SamplingParams, row_seed

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
    owners = list(owners)
    groups = {o: np.array([c for c, x in enumerate(owners) if x == o]) for o in dict.fromkeys(owners)}
    states: list[Any] = [None] * len(owners)
    done = np.zeros(len(owners), bool)
    cum = np.zeros(len(owners))  # each particle's Σ log Z so far
    log_w = np.zeros(len(owners))  # its weight since its problem's last resampling
    proposed = np.zeros(len(owners), int)
    resamples = dict.fromkeys(groups, 0)
    waiting, running = list(groups), []
    while waiting or running:
        rows = sum(int((~done[groups[o]]).sum()) for o in running)
        while waiting and (not running or max_rows is None or rows + len(groups[waiting[0]]) <= max_rows):
            o = waiting.pop(0)
            s0 = start(o)
            for c in groups[o]:
                states[c] = s0
            running.append(o)
            rows += len(groups[o])
        todo = [int(c) for o in running for c in groups[o] if not done[c]]
        for c, (state, finished) in zip(todo, extend(todo, [states[c] for c in todo])):
            proposed[c] += len(token_ids(state)) - len(token_ids(states[c]))
            w = float(log_weight(state, finished))
            log_w[c] += w - cum[c]
            states[c], done[c], cum[c] = state, finished, w
        for o in running:
            idx = groups[o]
            if not done[idx].all() and ess_share(log_w[idx]) < RESAMPLE_ESS:
                anc = idx[systematic(log_w[idx], rngs[o])]
                for c, state in zip(idx, [states[a] for a in anc]):  # read every ancestor before writing
                    states[c] = state
                done[idx], cum[idx], log_w[idx] = done[anc], cum[anc], 0.0
                resamples[o] += 1
        still = [o for o in running if not done[groups[o]].all()]
        if on_done is not None:
            on_done(len(running) - len(still))
        running = still
    return _tilt(states, groups, np.asarray(energy(states), float), log_w, proposed, tau, rngs, resamples)


def _tilt(states: list[Any], groups: dict[Any, np.ndarray], e: np.ndarray, log_w: np.ndarray, proposed: np.ndarray,
          tau: float, rngs: dict[Any, np.random.Generator], resamples: dict[Any, int]
          ) -> tuple[Chains, dict[Any, SMCStats]]:
    """The finished particles as chains: each slot's answer, then the one a systematic resampling by
    the tilted weights ``w · exp(−E/τ)`` put there (what ``ebd_vote`` votes over)."""
    chains = Chains(states=[], energies=[], accepted=[[] for _ in states], proposed=[int(p) for p in proposed])
    stats = {}
    after = np.arange(len(states))
    for o, idx in groups.items():
        tilted = log_w[idx] - e[idx] / tau
        after[idx] = idx[systematic(tilted, rngs[o])]
        stats[o] = SMCStats(resamples[o], ess_share(tilted))
    for c, a in enumerate(after):
        chains.states.append([token_ids(states[c]), token_ids(states[a])])
        chains.energies.append([float(e[c]), float(e[a])])
    return chains, stats


def run_smc_problems(
    sampler: ContinuingSampler, tokenizer: Any, params: SamplingParams, prompts: list[list[int]],
    energy: Callable[[list[int], list], np.ndarray], particles: int, block: int, alpha: float, tau: float, seed: int,
    keys: list[Any], progress: bool = False,
) -> tuple[list[Chains], list[SMCStats], bool]:
    """Power-SMC on every problem (prompt ids ``prompts[k]``, seeds from ``keys[k]``): ``particles``
    each, grown from the prompt in blocks of ``block`` tokens at ``params.temperature`` (``1/alpha``);
    ``energy(owners, states)`` scores the finished particles (``owners[i]``: state ``i``'s problem
    index). Up to ``params.batch_size`` unfinished particles are extended per round, problems joining
    as others finish (:func:`run_smc`); each particle is seeded by its slot and its own round, as
    the sampler seeds a problem's rows, so a problem's particles do not depend on the batch. Returns
    the chains, each problem's :class:`SMCStats`, and whether extensions reused the KV caches."""
    owners = [k for k in range(len(prompts)) for _ in range(particles)]
    seeds = [row_seed(stable_seed(seed, keys[k]), j) for k in range(len(prompts)) for j in range(particles)]
    propose = Proposer(sampler, tokenizer, params, [prompts[k] for k in owners], seeds)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts), unit="problem", desc=f"Power-SMC: {particles} particles per problem")

    def start(k: int) -> Any:
        return sampler.encode_answers(prompts[k], [[]], keep_past=propose.reuse_cache,
                                      temperature=params.temperature)[0]

    every, by_owner = run_smc(start, owners, partial(propose.extend, block=block),
                              partial(trace_log_weight, alpha=alpha, cap=params.max_new_tokens), partial(energy, owners),
                              tau, {k: np.random.default_rng([seed, k]) for k in range(len(prompts))},
                              max_rows=params.batch_size, on_done=bar.update if bar is not None else None)
    if bar is not None:
        bar.close()
    chains = [every.subset([c for c, o in enumerate(owners) if o == k]) for k in range(len(prompts))]
    return chains, [by_owner[k] for k in range(len(prompts))], propose.reuse_cache
