"""Energy-based decoding: block-wise Metropolis–Hastings toward p_LM(y|x) · exp(−E(y, x)/τ).

After EBD (arXiv:2605.28020), which has no public code; the derivation below is ours.

**States** are complete answers ``y`` (token ids, ``T(y)`` tokens, ended by EOS, a stop string or
the length cap, exactly as the sampler ends them). With block size ``B`` the *boundaries* of ``y``
are ``t ∈ {0, B, 2B, …, ⌊T(y)/B⌋·B}``: ``n(y) = ⌊T(y)/B⌋ + 1`` of them, all ``≤ T(y)``.

**Proposal.** Pick a boundary ``t`` of ``y`` uniformly, keep ``y_<t`` and regenerate everything after
it from the base model itself, ``y'_≥t ~ p_LM(· | x, y_<t)`` (temperature 1, no truncation, and the
same stop rules and cap on the answer's *total* length, so the proposal *is* the conditional of the
model that produced ``y``; :mod:`impetus.decoding.proposals`). Hence
``q(y' | y) = (1/n(y)) · p_LM(y'_≥t | x, y_<t)``, and since ``T(y') ≥ t``, ``t`` is also a boundary
of ``y'``, so the reverse move exists with ``q(y | y') = (1/n(y')) · p_LM(y_≥t | x, y_<t)``.

**Acceptance.** With target ``π(y) ∝ p_LM(y|x) e^{−E(y)/τ}`` and ``p_LM(y|x) = p_LM(y_<t|x) ·
p_LM(y_≥t | x, y_<t)`` (the same prefix for ``y`` and ``y'``):

    π(y') q(y|y')     p(y_<t) p(y'_≥t|·) e^{−E(y')/τ} · (1/n(y')) p(y_≥t|·)
    ------------- = ---------------------------------------------------------- = e^{(E(y)−E(y'))/τ} · n(y)/n(y')
    π(y) q(y'|y)      p(y_<t) p(y_≥t|·) e^{−E(y)/τ} · (1/n(y)) p(y'_≥t|·)

so ``α = min(1, exp((E(y) − E(y'))/τ) · n(y)/n(y'))``: every p_LM term cancels, and the factor
``n(y)/n(y')`` corrects for choosing ``t`` among a different number of boundaries when ``y`` and
``y'`` differ in length. As ``τ → ∞`` the chain samples ``p_LM`` itself (the factor keeps it
exact). Several chains per problem start from independent base samples; each reports its final
state and the lowest-energy state it visited.

**Power target** (power sampling, Karan & Du, arXiv:2510.14901). Target ``π_α(y) ∝ p_LM(y|x)^α
e^{−E(y)/τ}`` (α ≥ 1 sharpens the model's own distribution), proposals from the model at
temperature ``1/α``: each regenerated step draws from ``p_i(v)^α / Z_i`` with
``Z_i = Σ_v p_i(v)^α``, i.e. ``log Z_i = logsumexp(α f_i) − α logsumexp(f_i)`` for the step's raw
logits ``f_i``, a number the sampler can record while decoding (no extra pass). So
``q(y'_≥t | y_<t) = p(y'_≥t|·)^α / Π_{i≥t} Z_i(y')``, and

    π_α(y') q(y|y')                                           Π_{i≥t} Z_i(y')
    --------------- = e^{(E(y)−E(y'))/τ} · n(y)/n(y') · ------------------
    π_α(y) q(y'|y)                                            Π_{i≥t} Z_i(y)

since every ``p^α`` term cancels: the ratio keeps the proposal's normalisers of the steps each
answer's suffix was (or would have been) drawn with, those that produced its tokens from ``t`` on
and, when the model ended it (EOS or a stop string, not the length cap), the ending step. With
α = 1 every ``Z_i = 1`` and the plain tilt above comes back. The normalisers enter through
``run_chains(log_norm=...)``; leaving the factor out biases the chain (tests/decoding/test_mh.py).

**Differing proposals** (``run_chains(token_logq=...)``). A resampled block often comes back
unchanged (the model is peaked), so most proposals waste their tokens. The differing kernel
conditions the proposal on changing the block's first token: cut ``t`` is drawn uniformly among the
``m(y) = ⌈T(y)/B⌉`` boundaries *inside* the answer (``t < T(y)``, so ``y_t`` exists), the first new
token from the proposal's step distribution with ``y_t`` removed, ``q(v)/(1 − q(y_t))`` for
``v ≠ y_t`` (``q`` the step's tempered distribution, ``p^α/Z_t``), and the rest as before. The
reverse move from ``y'`` cuts at the same ``t`` (``t < T(y')`` when ``y'`` has a token there) and
must draw ``y_t`` with ``y'_t`` removed, so

    π_α(y') q(y|y')                                 1 − q(y_t | x, y_<t)     Π_{i≥t} Z_i(y')
    --------------- = e^{(E(y)−E(y'))/τ} · m(y)/m(y') · ----------------------- · ---------------
    π_α(y) q(y'|y)                                  1 − q(y'_t | x, y_<t)    Π_{i≥t} Z_i(y)

(``Z_t`` is the same step for both and cancels). A proposal that ends at the cut (``T(y') = t``: EOS
or a stop string right away) has no reverse move and is rejected, which is exact (its reverse
probability is 0); an empty answer has no cut and stays. So the kernel samples the target
restricted to non-empty answers, the only ones a chain started from one can reach. Leaving out the
``(1 − q)`` factor biases the chain (tests/decoding/test_mh.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: A chain state: an answer's token ids, or any object carrying them (e.g. an
#: :class:`impetus.lm.trace.Trace` with the KV cache and recorded values to continue it from).
State = Any
#: ``propose(states, cuts) -> new states``: each keeps its state's first ``cut`` tokens and
#: continues them with the base model at temperature 1/α (batched over chains); the differing
#: kernel calls ``propose(states, cuts, banned)``.
Propose = Callable[[list[State], list[int]], list[State]]
#: ``energy(chains, states) -> energies`` (lower = better): ``chains[i]`` is the index of the chain
#: ``states[i]`` belongs to, so a caller running many problems' chains scores each state against its
#: own problem; :func:`run_chains` asks only about states a chain has not scored yet.
Energy = Callable[[list[int], list[State]], np.ndarray]
#: ``log_norm(state) -> log Z_i`` of each step that produced the answer: one per token, plus the
#: ending step when the model ended it (not the length cap); see "Power target" above.
LogNorm = Callable[[State], np.ndarray]
#: ``token_logq(state, t) -> log q(y_t | x, y_<t)``: the log-probability of the answer's token ``t``
#: under the proposal's step distribution (the differing kernel, "Differing proposals" above).
TokenLogQ = Callable[[State, int], float]


def token_ids(state: State) -> list[int]:
    """The answer's token ids: the state itself, or its ``ids``."""
    return list(getattr(state, "ids", state))


def n_boundaries(length: int, block: int) -> int:
    """``n(y) = ⌊T(y)/B⌋ + 1``: the block boundaries ``0, B, …`` not beyond the answer's end."""
    return length // block + 1


def inner_boundaries(length: int, block: int) -> int:
    """``m(y) = ⌈T(y)/B⌉``: the block boundaries strictly inside the answer (the differing kernel's cuts)."""
    return -(-length // block)


def acceptance(e_old: float, e_new: float, len_old: int, len_new: int, tau: float, block: int,
               log_norm_ratio: float = 0.0, boundaries: Callable[[int, int], int] = n_boundaries) -> float:
    """``min(1, exp((E(y) − E(y'))/τ) · n(y)/n(y') · Π Z(y')/Π Z(y))`` (see the module docstring;
    ``log_norm_ratio`` is the log of the last factor, 0 for the plain tilt, plus
    :func:`differ_log_ratio` for the differing kernel, whose cuts are counted by ``boundaries`` =
    :func:`inner_boundaries`)."""
    log_a = ((e_old - e_new) / tau + math.log(boundaries(len_old, block)) - math.log(boundaries(len_new, block))
             + log_norm_ratio)
    return 1.0 if log_a >= 0 else math.exp(log_a)


def differ_log_ratio(logq_old: float, logq_new: float) -> float:
    """``log[(1 − q(y_t))/(1 − q(y'_t))]``, the differing kernel's factor for its first tokens
    (``logq_*``: their log q); −inf when ``q(y_t)`` is 1 in float (no mass left to move to)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_free = float(np.log1p(-np.exp(logq_old))) - float(np.log1p(-np.exp(logq_new)))
    return -math.inf if math.isnan(log_free) else log_free


def suffix_log_norm(log_norm: LogNorm | None, state: State, cut: int) -> float:
    """``Σ_{i≥cut} log Z_i`` of a state's answer (0 without a power target)."""
    return 0.0 if log_norm is None else float(np.sum(np.asarray(log_norm(state), dtype=float)[cut:]))


@dataclass
class Chains:
    """Every chain's trajectory: ``states[c]`` the answer after each step (start first)."""

    states: list[list[list[int]]]
    energies: list[list[float]]
    accepted: list[list[bool]] = field(default_factory=list)
    proposed: list[int] = field(default_factory=list)  # tokens the model generated for each chain's proposals

    @property
    def proposed_tokens(self) -> int:
        return int(sum(self.proposed))

    def subset(self, idx: Sequence[int]) -> Chains:
        """The chains ``idx`` (e.g. one problem's, out of a run over many problems)."""
        return Chains([self.states[i] for i in idx], [self.energies[i] for i in idx],
                      [self.accepted[i] for i in idx], [self.proposed[i] for i in idx])

    def final(self) -> list[tuple[list[int], float]]:
        return [(s[-1], e[-1]) for s, e in zip(self.states, self.energies)]

    def lowest(self) -> list[tuple[list[int], float]]:
        out = []
        for s, e in zip(self.states, self.energies):
            i = int(np.argmin(e))
            out.append((s[i], e[i]))
        return out

    def acceptance_rate(self) -> float:
        flat = [a for acc in self.accepted for a in acc]
        return float(np.mean(flat)) if flat else float("nan")

    def move_counts(self) -> tuple[int, int, int]:
        """``(proposals, moves, rejections)``: moves are accepted proposals that changed the chain's
        answer. A proposal identical to the current answer has ratio 1 (same energy, since a chain keeps
        an answer's first energy; same blocks and normalisers) and is accepted, so a rejection is a
        proposal that differed, and only moves and rejections show the tilt at work:
        ``moves / (moves + rejections)`` is the acceptance of proposals that change the answer."""
        moves = sum(ok and s[t + 1] != s[t] for s, acc in zip(self.states, self.accepted) for t, ok in enumerate(acc))
        rejections = sum(not ok for acc in self.accepted for ok in acc)
        return sum(len(acc) for acc in self.accepted), int(moves), int(rejections)


def run_chains(
    starts: Sequence[State], propose: Propose, energy: Energy, tau: float, block: int, steps: int,
    rng: np.random.Generator | Sequence[np.random.Generator], on_step: Callable[[], None] | None = None,
    log_norm: LogNorm | None = None, token_logq: TokenLogQ | None = None,
) -> Chains:
    """Run one MH chain from each start for ``steps`` steps, all chains' proposals in one batch.

    ``log_norm``: the proposal's per-step log-normalisers when it samples at temperature 1/α
    toward the power target ``p^α e^{−E/τ}`` (module docstring); None for the plain tilt (α = 1).
    ``token_logq``: use the differing kernel (module docstring): ``propose(states, cuts, banned)``
    must then draw each row's first new token with ``banned[c]`` removed (None: the chain stays).

    ``rng``: one generator for all chains, or one per chain (then a chain's cuts and acceptances
    do not depend on which other chains share the batch, e.g. other problems' chains batched
    together so the model decodes many rows per forward). ``Chains`` keeps the token ids of every
    state visited (not the states, which may hold caches). ``on_step`` is called after each step.
    """
    if tau <= 0 or block < 1:
        raise ValueError(f"need tau > 0 and block >= 1, got tau={tau}, block={block}")
    current = list(starts)
    rngs = [rng] * len(current) if isinstance(rng, np.random.Generator) else list(rng)
    if len(rngs) != len(current):
        raise ValueError(f"{len(current)} chains but {len(rngs)} random generators")
    seen: list[dict[tuple[int, ...], float]] = [{} for _ in current]
    e_cur = _first_energies(current, seen, energy)
    chains = Chains(states=[[token_ids(c)] for c in current], energies=[[e] for e in e_cur],
                    accepted=[[] for _ in current], proposed=[0] * len(current))
    bounds = n_boundaries if token_logq is None else inner_boundaries
    for _ in range(steps):
        cuts, banned = _cuts(current, rngs, block, bounds)
        proposals = propose(current, cuts) if token_logq is None else propose(current, cuts, banned)
        e_new = _first_energies(proposals, seen, energy)
        u = [g.random() for g in rngs]
        for c, (y, y2, t) in enumerate(zip(current, proposals, cuts)):
            old, new = token_ids(y), token_ids(y2)
            chains.proposed[c] += max(len(new) - t, 0)
            if token_logq is not None and (banned[c] is None or len(new) <= t):
                ok = False  # an empty answer stays; a proposal ending at the cut has no reverse move
            else:
                if new[:t] != old[:t]:
                    raise ValueError("a proposal must keep the prefix it was given")
                ratio = suffix_log_norm(log_norm, y2, t) - suffix_log_norm(log_norm, y, t)
                if token_logq is not None:
                    if new[t] == old[t]:
                        raise ValueError(f"a differing proposal kept the banned token {old[t]} at {t}")
                    ratio += differ_log_ratio(token_logq(y, t), token_logq(y2, t))
                ok = bool(u[c] < acceptance(e_cur[c], e_new[c], len(old), len(new), tau, block, ratio, bounds))
            if ok:
                current[c], e_cur[c] = y2, e_new[c]
            chains.states[c].append(token_ids(current[c]))
            chains.energies[c].append(e_cur[c])
            chains.accepted[c].append(ok)
        if on_step is not None:
            on_step()
    return chains


def _first_energies(states: list[State], seen: list[dict[tuple[int, ...], float]], energy: Energy) -> list[float]:
    """Each chain's energy of its state: the first one the chain computed for those tokens, so only
    states new to their chain are scored (one call). Why the first: in bf16 the same tokens recorded
    in another batch can score differently (docs/benchmarks.md), and a chain revisiting an answer would
    otherwise accept or reject on that noise, and `lowest` would prefer answers revisited most (the
    minimum of more noisy copies). Why only new ones: a proposal equal to the chain's answer, most
    of them with a peaked model, would be scored only to be thrown away."""
    keys = [tuple(token_ids(y)) for y in states]
    fresh = [c for c, k in enumerate(keys) if k not in seen[c]]
    if fresh:
        for c, e in zip(fresh, energy(fresh, [states[c] for c in fresh])):
            seen[c][keys[c]] = float(e)
    return [seen[c][k] for c, k in enumerate(keys)]


def _cuts(states: list[State], rngs: list[np.random.Generator], block: int,
          bounds: Callable[[int, int], int]) -> tuple[list[int], list[int | None]]:
    """Each chain's cut, uniform over its ``bounds`` boundaries (all ``n(y)``, or the differing
    kernel's ``m(y)`` inside the answer), and the token at the cut, which the differing kernel bans
    (None past the answer's end; an empty answer has no inner cut: it is proposed from 0 unbanned only
    to keep the batch aligned, and stays)."""
    cuts, banned = [], []
    for g, y in zip(rngs, states):
        ids = token_ids(y)
        m = bounds(len(ids), block)
        t = int(g.integers(m)) * block if m else 0
        cuts.append(t)
        banned.append(ids[t] if t < len(ids) else None)
    return cuts, banned
