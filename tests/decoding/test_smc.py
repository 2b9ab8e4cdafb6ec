"""Power-SMC (impetus.decoding.smc): on the enumerable toy of test_mh, many particles resampled
toward p^α and tilted by exp(−E/τ) reproduce the target p^α·e^{−E/τ}/Z; without the proposal's
normalisers as weights they do not (so the test can fail)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chisquare

from impetus.decoding.smc import ess_share, run_smc, systematic

from .test_mh import EOS, MAX_LEN, answers, energy_fn, next_probs, power_target, tempered


def toy_extend(rng: np.random.Generator, alpha: float, block: int):
    """Each state (a tuple of kept tokens) continued by up to ``block`` toy tokens at temperature
    1/alpha; finished when EOS is drawn or the cap is reached."""
    def extend(_rows, states):
        out = []
        for y in states:
            y, done = list(y), False
            for _ in range(block):
                tok = int(rng.choice(3, p=tempered(tuple(y), alpha)))
                if tok == EOS:
                    done = True
                    break
                y.append(tok)
                if len(y) == MAX_LEN:
                    done = True
                    break
            out.append((tuple(y), done))
        return out
    return extend


def toy_log_weight(alpha: float):
    """Σ log Z_i over the steps that produced y (the EOS step too once finished, unless capped)."""
    def log_weight(y, finished):
        steps = len(y) + (1 if finished and len(y) < MAX_LEN else 0)
        return float(sum(np.log((next_probs(tuple(y[:i])) ** alpha).sum()) for i in range(steps)))
    return log_weight


def smc_counts(alpha: float, tau: float, block: int, particles: int = 6000, seed: int = 0,
               log_weight=None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    chains, stats = run_smc(lambda _o: (), [0] * particles, toy_extend(rng, alpha, block),
                            log_weight or toy_log_weight(alpha), lambda ys: energy_fn([list(y) for y in ys]), tau,
                            {0: np.random.default_rng(seed + 1)})
    index = {y: i for i, y in enumerate(answers())}
    counts = np.zeros(len(index))
    for states in chains.states:
        counts[index[tuple(states[-1])]] += 1  # the particles after the tilt's resampling
    assert 0 < stats[0].final_ess <= 1
    return counts


@pytest.mark.parametrize(("alpha", "tau", "block"), [(2.0, 1.0, 1), (3.0, 4.0, 2), (1.0, 1.0, 1)])
def test_tilted_particles_match_the_power_target(alpha, tau, block):
    counts = smc_counts(alpha, tau, block)
    want = power_target(alpha, tau)
    assert chisquare(counts, want * counts.sum()).pvalue > 1e-3
    assert np.abs(counts / counts.sum() - want).max() < 0.03


def test_the_test_fails_without_the_normalisers_as_weights():
    # Particles from the tempered proposals but unweighted: they follow q, not p^alpha (tau huge: no tilt).
    counts = smc_counts(3.0, 1e9, 1, log_weight=lambda y, finished: 0.0)
    assert chisquare(counts, power_target(3.0, 1e9) * counts.sum()).pvalue < 1e-6


def test_resampling_keeps_each_ancestor_once_per_copy():
    """Systematic resampling: even weights keep every particle once; a weight of 1 copies that particle."""
    rng = np.random.default_rng(0)
    assert (systematic(np.zeros(5), rng) == np.arange(5)).all()
    assert (systematic(np.log([1e-12, 1.0, 1e-12]), rng) == 1).all()
    for _ in range(20):  # each particle copied floor(n w) or ceil(n w) times: 1.5, 0.75, 0.75
        copies = np.bincount(systematic(np.log([0.5, 0.25, 0.25]), rng), minlength=3)
        assert copies.sum() == 3 and copies[0] in (1, 2) and set(copies[1:]) <= {0, 1}
    assert ess_share(np.zeros(4)) == pytest.approx(1.0)
    assert ess_share(np.log([1.0, 1e-30, 1e-30, 1e-30])) == pytest.approx(0.25)


def keyed_extend(block: int = 1, alpha: float = 2.0):
    """A toy extend seeded by each particle's slot and length (as the sampler seeds a row by its slot
    and round), so a particle's continuation does not depend on what else is in the batch."""
    def extend(rows, states):
        out = []
        for r, y in zip(rows, states):
            g = np.random.default_rng([r, len(y)])
            y, done = list(y), False
            for _ in range(block):
                tok = int(g.choice(3, p=tempered(tuple(y), alpha)))
                if tok == EOS or len(y) + 1 == MAX_LEN:
                    y += [] if tok == EOS else [tok]
                    done = True
                    break
                y.append(tok)
            out.append((tuple(y), done))
        return out
    return extend


@pytest.mark.parametrize("max_rows", [None, 4, 8, 12])
def test_problems_do_not_depend_on_who_shares_the_round(max_rows):
    """Problems joining as others finish (``max_rows``) or all at once give the same particles: each
    problem resamples with its own generator and each particle's extension is seeded by its slot."""
    owners = [k for k in range(5) for _ in range(4)]
    energy = lambda ys: energy_fn([list(y) for y in ys])  # noqa: E731

    def uneven(y, _finished):  # any weight of the state will do here; this one makes problems resample
        return -3.0 * sum(y)

    def run(rows):
        return run_smc(lambda _o: (), owners, keyed_extend(), uneven, energy, 1.0,
                       {k: np.random.default_rng(k) for k in range(5)}, max_rows=rows)

    (ref, ref_stats), (got, stats) = run(None), run(max_rows)
    assert got.states == ref.states and got.proposed == ref.proposed and stats == ref_stats
    assert any(s.resamples for s in ref_stats.values())  # the weights did move some particles


def test_a_round_never_holds_more_than_max_rows():
    seen = []

    def extend(rows, states):
        seen.append(len(rows))
        return keyed_extend()(rows, states)

    run_smc(lambda _o: (), [k for k in range(6) for _ in range(3)], extend, toy_log_weight(1.0),
            lambda ys: np.zeros(len(ys)), 1.0, {k: np.random.default_rng(k) for k in range(6)}, max_rows=7)
    assert max(seen) <= 7 and seen[0] == 6  # two problems of 3 fit, a third does not
    assert sum(seen) > 18  # every particle took several rounds
