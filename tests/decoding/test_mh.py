"""Block-wise Metropolis–Hastings: the chain's empirical distribution is p · exp(−E/τ)/Z.

A toy "model" with an enumerable output space: tokens {0, 1, 2}, where 2 ends the answer (EOS) and
answers have at most 3 tokens, with known next-token probabilities; every answer's probability is
exact, so the tilted target is too, and a chi-square test checks the chain against it.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import chisquare

from impetus.decoding.mh import Chains, acceptance, n_boundaries, run_chains

EOS, MAX_LEN = 2, 3


def next_probs(prefix: tuple[int, ...]) -> np.ndarray:
    """p(next | prefix) over {0, 1, EOS}, different for every prefix."""
    h = (sum(prefix) + 2 * len(prefix)) % 3
    return np.array([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.3, 0.2, 0.5]][h])


def answers() -> list[tuple[int, ...]]:
    """All complete answers: the kept tokens (EOS dropped, as the sampler drops it)."""
    out = []
    for n in range(MAX_LEN + 1):
        out += list(itertools.product((0, 1), repeat=n))
    return out


def p_answer(y: tuple[int, ...]) -> float:
    p = 1.0
    for i, tok in enumerate(y):
        p *= next_probs(y[:i])[tok]
    return p * (next_probs(y)[EOS] if len(y) < MAX_LEN else 1.0)  # the cap ends an answer without EOS


def make_propose(rng: np.random.Generator, alpha: float = 1.0):
    """Regenerate after the cut from the toy model at temperature 1/alpha; with ``banned`` (the
    differing kernel) a row's first new token is drawn with its banned token removed."""
    def propose(states: list[list[int]], cuts: list[int], banned=None) -> list[list[int]]:
        out = []
        for c, (state, t) in enumerate(zip(states, cuts)):
            y = list(state[:t])
            ban = None if banned is None else banned[c]
            while len(y) < MAX_LEN:
                q = tempered(tuple(y), alpha)
                if ban is not None:
                    q = np.where(np.arange(3) == ban, 0.0, q)
                    q, ban = q / q.sum(), None
                tok = int(rng.choice(3, p=q))
                if tok == EOS:
                    break
                y.append(tok)
            out.append(y)
        return out
    return propose


def tempered(prefix: tuple[int, ...], alpha: float) -> np.ndarray:
    q = next_probs(prefix) ** alpha
    return q / q.sum()


def energy_fn(ys: list[list[int]]) -> np.ndarray:
    return np.array([2.0 * sum(y) - 1.5 * (len(y) == 2) for y in ys])  # favours zeros and length 2


def chain_energy(_chains: list[int], ys: list[list[int]]) -> np.ndarray:
    """``energy_fn`` as ``run_chains`` calls an energy (the toy's chains all score alike)."""
    return energy_fn(ys)


def chain_counts(tau: float, block: int, seed: int = 0, chains: int = 40, steps: int = 400, burn: int = 50,
                 thin: int = 4, alpha: float = 1.0, log_norm=None, token_logq=None) -> np.ndarray:
    """Visits per answer after burn-in, every ``thin``-th state (consecutive states are correlated).
    With ``token_logq`` (the differing kernel) chains start from non-empty answers."""
    rng = np.random.default_rng(seed)
    propose = make_propose(rng, alpha)
    starts = propose([[] for _ in range(chains)], [0] * chains)
    if token_logq is not None:
        starts = [y or [int(rng.integers(2))] for y in starts]
    res = run_chains(starts, propose, chain_energy, tau=tau, block=block, steps=steps, rng=rng, log_norm=log_norm,
                     token_logq=token_logq)
    index = {y: i for i, y in enumerate(answers())}
    counts = np.zeros(len(index))
    for states in res.states:
        for y in states[burn::thin]:
            counts[index[tuple(y)]] += 1
    return counts


def target(tau: float) -> np.ndarray:
    ys = answers()
    w = np.array([p_answer(y) * np.exp(-energy_fn([list(y)])[0] / tau) for y in ys])
    return w / w.sum()


def test_the_toy_model_is_a_distribution():
    assert sum(p_answer(y) for y in answers()) == pytest.approx(1.0)


@pytest.mark.parametrize("block", [1, 2])
def test_chain_matches_the_tilted_target(block):
    counts = chain_counts(tau=1.0, block=block)
    assert chisquare(counts, target(1.0) * counts.sum()).pvalue > 0.01
    assert np.abs(counts / counts.sum() - target(1.0)).max() < 0.03


def test_infinite_temperature_gives_back_the_base_distribution():
    counts = chain_counts(tau=1e9, block=1, seed=1)
    base = np.array([p_answer(y) for y in answers()])
    assert chisquare(counts, base * counts.sum()).pvalue > 0.01
    assert np.abs(counts / counts.sum() - base).max() < 0.03
    # Without the n(y)/n(y') correction the chain would be biased: check the factor is used.
    assert acceptance(0.0, 0.0, len_old=1, len_new=3, tau=1e9, block=1) == pytest.approx(n_boundaries(1, 1) / n_boundaries(3, 1))


def test_same_seed_same_chain():
    assert (chain_counts(1.0, 2, seed=3, steps=50) == chain_counts(1.0, 2, seed=3, steps=50)).all()


def test_the_test_can_fail_without_the_length_correction(monkeypatch):
    import impetus.decoding.mh as mh

    monkeypatch.setattr(mh, "acceptance", lambda e0, e1, l0, l1, tau, block, *_: min(1.0, float(np.exp((e0 - e1) / tau))))
    counts = chain_counts(tau=1e9, block=1, seed=1, steps=800)
    base = np.array([p_answer(y) for y in answers()])
    assert chisquare(counts, base * counts.sum()).pvalue < 1e-3


# --- the power target p^alpha * exp(-E/tau) with proposals at temperature 1/alpha (power sampling)

def log_norm_of(alpha: float):
    """log Z_i = log sum_v p_i(v)^alpha for each step that produced y: its tokens, and the EOS
    step unless the length cap ended it (what the sampler would record while decoding)."""
    def log_norm(y) -> np.ndarray:
        y = tuple(y)
        steps = len(y) + (1 if len(y) < MAX_LEN else 0)
        return np.array([np.log((next_probs(y[:i]) ** alpha).sum()) for i in range(steps)])
    return log_norm


def power_target(alpha: float, tau: float) -> np.ndarray:
    w = np.array([p_answer(y) ** alpha * np.exp(-energy_fn([list(y)])[0] / tau) for y in answers()])
    return w / w.sum()


@pytest.mark.parametrize(("alpha", "tau", "block"), [(2.0, 1.0, 1), (3.0, 4.0, 2)])
def test_power_target_with_tempered_proposals(alpha, tau, block):
    counts = chain_counts(tau, block, steps=600, alpha=alpha, log_norm=log_norm_of(alpha))
    want = power_target(alpha, tau)
    assert chisquare(counts, want * counts.sum()).pvalue > 0.01
    assert np.abs(counts / counts.sum() - want).max() < 0.03


def test_power_target_fails_without_the_proposal_normalisers():
    # Same tempered proposals, the Z ratio left out: the chain no longer samples p^alpha e^{-E/tau}.
    counts = chain_counts(1e9, 1, seed=1, steps=800, alpha=3.0)
    assert chisquare(counts, power_target(3.0, 1e9) * counts.sum()).pvalue < 1e-3


def test_alpha_one_normalisers_are_zero():
    assert np.allclose(log_norm_of(1.0)((0, 1)), 0.0)


def test_move_counts_separate_moves_from_identical_proposals_and_rejections():
    a, b, c = [1, 2], [1, 3], [4]
    chains = Chains(states=[[a, a, b, b], [c, c]], energies=[[0.0] * 4, [0.0] * 2],
                    accepted=[[True, True, False], [True]])  # chain 0: identical, a move, a rejection
    assert chains.move_counts() == (4, 1, 1)
    assert chains.acceptance_rate() == 0.75  # the identical proposals count as accepted


# --- the differing kernel: the first regenerated token must differ from the chain's

def token_logq_of(alpha: float):
    """log q(y_t | y_<t): the toy's tempered step distribution at the answer's token t."""
    return lambda y, t: float(np.log(tempered(tuple(y[:t]), alpha)[y[t]]))


def nonempty(w: np.ndarray) -> np.ndarray:
    """``w`` restricted to non-empty answers (the empty one is the first), renormalised."""
    w = w.copy()
    w[0] = 0.0
    return w / w.sum()


def drop_ratio_term(monkeypatch):
    """Keep the boundary counts, drop the (1 - q(y_t)) / (1 - q(y'_t)) factor."""
    import impetus.decoding.mh as mh

    monkeypatch.setattr(mh, "differ_log_ratio", lambda lo, ln: 0.0)


def suffixes(prefix: list[int], alpha: float) -> dict[tuple[int, ...], float]:
    """Every answer the proposal can complete ``prefix`` to, with its probability at temperature 1/alpha."""
    out: dict[tuple[int, ...], float] = {}

    def grow(y: list[int], p: float) -> None:
        if len(y) == MAX_LEN:
            out[tuple(y)] = out.get(tuple(y), 0.0) + p
            return
        q = tempered(tuple(y), alpha)
        out[tuple(y)] = out.get(tuple(y), 0.0) + p * q[EOS]
        for v in (0, 1):
            grow(y + [v], p * q[v])
    grow(list(prefix), 1.0)
    return out


def differing_kernel(alpha: float, tau: float, block: int) -> np.ndarray:
    """The differing kernel's exact transition matrix over non-empty answers, built from the toy's
    probabilities and :mod:`impetus.decoding.mh`'s acceptance (no sampling)."""
    from impetus.decoding import mh
    from impetus.decoding.mh import inner_boundaries, suffix_log_norm

    ys = answers()[1:]
    index = {y: i for i, y in enumerate(ys)}
    log_norm, logq = (None if alpha == 1 else log_norm_of(alpha)), token_logq_of(alpha)
    K = np.zeros((len(ys), len(ys)))
    for y in ys:
        cuts = range(0, len(y), block)
        for t in cuts:
            q = tempered(y[:t], alpha)
            K[index[y], index[y]] += q[EOS] / (1 - q[y[t]]) / len(cuts)  # ends at the cut: rejected
            v = 1 - y[t]
            for y2, p in suffixes(list(y[:t]) + [v], alpha).items():
                ratio = (suffix_log_norm(log_norm, list(y2), t) - suffix_log_norm(log_norm, list(y), t)
                         + mh.differ_log_ratio(logq(list(y), t), logq(list(y2), t)))
                a = acceptance(energy_fn([list(y)])[0], energy_fn([list(y2)])[0], len(y), len(y2), tau, block, ratio,
                               inner_boundaries)
                w = q[v] / (1 - q[y[t]]) * p / len(cuts)
                K[index[y], index[y2]] += w * a
                K[index[y], index[y]] += w * (1 - a)
    return K


@pytest.mark.parametrize(("alpha", "tau", "block"), [(1.0, 1.0, 1), (1.0, 1.0, 2), (2.0, 1.0, 1), (3.0, 4.0, 2)])
def test_differing_kernel_leaves_the_target_invariant_exactly(alpha, tau, block, monkeypatch):
    K, pi = differing_kernel(alpha, tau, block), nonempty(power_target(alpha, tau))[1:]
    assert np.allclose(K.sum(axis=1), 1.0)
    assert np.abs(pi @ K - pi).max() < 1e-12
    drop_ratio_term(monkeypatch)
    assert np.abs(pi @ differing_kernel(alpha, tau, block) - pi).max() > 5e-3  # the check can fail


# A flatter target (tau = 4) than above: a peaked one makes the differing chain sticky (most moves
# leave the mode and are rejected), and autocorrelated visits break chi-square's independence.
@pytest.mark.parametrize(("alpha", "tau", "block"), [(1.0, 4.0, 1), (1.0, 4.0, 2), (3.0, 4.0, 2)])
def test_differing_proposals_match_the_target(alpha, tau, block):
    counts = chain_counts(tau, block, steps=1000, thin=10, alpha=alpha,
                          log_norm=None if alpha == 1 else log_norm_of(alpha), token_logq=token_logq_of(alpha))
    want = nonempty(power_target(alpha, tau))
    assert counts[0] == 0  # a non-empty chain never moves to the empty answer
    assert chisquare(counts[1:], want[1:] * counts.sum()).pvalue > 0.01
    assert np.abs(counts / counts.sum() - want).max() < 0.03


def test_differing_proposals_fail_the_chi_square_without_their_ratio_term(monkeypatch):
    drop_ratio_term(monkeypatch)
    counts = chain_counts(4.0, 2, steps=1000, thin=10, alpha=3.0, log_norm=log_norm_of(3.0),
                          token_logq=token_logq_of(3.0))
    want = nonempty(power_target(3.0, 4.0))
    assert chisquare(counts[1:], want[1:] * counts.sum()).pvalue < 1e-3


def test_differing_proposals_always_change_the_block():
    rng = np.random.default_rng(0)
    propose = make_propose(rng)
    starts = [[0, 1, 0], [1], [0, 0]]
    res = run_chains(starts, propose, chain_energy, tau=1.0, block=1, steps=30, rng=rng, token_logq=token_logq_of(1.0))
    proposals, moves, rejections = res.move_counts()
    assert moves + rejections == proposals == 90  # no proposal equals the chain's answer
    assert moves > 0


def test_a_chain_scores_an_answer_once_whatever_the_energy_says_later():
    """In bf16 the same tokens recorded in another batch can score differently; a chain keeps an
    answer's first energy, so revisiting it does not move its energy (and an identical proposal's
    ratio is exactly 1)."""
    rng = np.random.default_rng(0)
    propose = make_propose(rng)
    noise = np.random.default_rng(1)

    def noisy(_chains: list[int], ys: list[list[int]]) -> np.ndarray:  # the toy energy plus a fresh draw every call
        return energy_fn(ys) + noise.normal(0.0, 0.5, len(ys))

    starts = propose([[] for _ in range(8)], [0] * 8)
    res = run_chains(starts, propose, noisy, tau=0.3, block=1, steps=60, rng=rng)
    revisits = 0
    for states, energies in zip(res.states, res.energies):
        first: dict[tuple[int, ...], float] = {}
        for y, e in zip(states, energies):
            revisits += tuple(y) in first
            assert first.setdefault(tuple(y), e) == e
    assert revisits > 100  # the chains do revisit answers: the check above is not vacuous


def test_a_chain_asks_the_energy_only_about_answers_it_has_not_scored():
    """Each (chain, answer) is scored once, with the chain's own index: a proposal equal to an
    answer the chain already scored (most proposals from a peaked model) costs no energy call."""
    rng = np.random.default_rng(0)
    propose = make_propose(rng)
    asked: list[tuple[int, tuple[int, ...]]] = []

    def per_chain(chains: list[int], ys: list[list[int]]) -> np.ndarray:  # chain c's energy is shifted by c
        asked.extend((c, tuple(y)) for c, y in zip(chains, ys))
        return energy_fn(ys) + np.asarray(chains, float)

    chains, steps = 8, 60
    starts = propose([[] for _ in range(chains)], [0] * chains)
    res = run_chains(starts, propose, per_chain, tau=0.3, block=1, steps=steps, rng=rng)
    assert len(asked) == len(set(asked))
    assert len(asked) < (chains * (steps + 1)) // 2  # most proposals were answers already scored
    for c, (states, energies) in enumerate(zip(res.states, res.energies)):
        assert {(c, tuple(y)) for y in states} <= set(asked)
        np.testing.assert_allclose(energies, energy_fn(states) + c)
