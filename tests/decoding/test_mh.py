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
    """Regenerate after the cut from the toy model at temperature 1/alpha."""
    def propose(states: list[list[int]], cuts: list[int]) -> list[list[int]]:
        out = []
        for state, t in zip(states, cuts):
            y = list(state[:t])
            while len(y) < MAX_LEN:
                tok = int(rng.choice(3, p=tempered(tuple(y), alpha)))
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


def chain_counts(tau: float, block: int, seed: int = 0, chains: int = 40, steps: int = 400, burn: int = 50,
                 thin: int = 4, alpha: float = 1.0, log_norm=None) -> np.ndarray:
    """Visits per answer after burn-in, every ``thin``-th state (consecutive states are correlated)."""
    rng = np.random.default_rng(seed)
    propose = make_propose(rng, alpha)
    starts = propose([[] for _ in range(chains)], [0] * chains)
    res = run_chains(starts, propose, energy_fn, tau=tau, block=block, steps=steps, rng=rng, log_norm=log_norm)
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
