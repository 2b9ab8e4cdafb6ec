"""V2 latent optimisation on the tiny random Llama with planted energies whose minimum is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from impetus.latent.optimize import LatentConfig, LatentOptimizer, prefix_states
from impetus.lm.hf_sampler import HFSampler
from impetus.lm.sampler import SamplingParams
from impetus.testing import tiny_llama, tiny_tokenizer

PARAMS = SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=8, stop=["\n"], batch_size=8, seed=0)


def _cfg(**kw) -> LatentConfig:
    base = dict(mode="reinforce", prefix_fraction=0.25, min_prefix=1, steps=6, lr=0.5, samples=8, radius=1.0,
                stop_energy=None)
    return LatentConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    tok, model = tiny_tokenizer(), tiny_llama(seed=1)
    with torch.no_grad():  # a sharper random model, so argmax prefixes are not all one token
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    sampler = HFSampler(model, tok)
    prompt = tok("Q: 2+2?\nA:")["input_ids"]
    start = sampler.generate([prompt], PARAMS, [0])[0][0]
    return tok, model, sampler, prompt, start


def planted(tok, target: str):
    """Energy 0 when the answer starts with ``target``, else 1: its minimum is known."""
    return lambda gens: np.array([0.0 if g.text.startswith(target) else 1.0 for g in gens])


def test_reinforce_lowers_a_planted_energy_and_changes_the_prefix(setup):
    tok, model, sampler, prompt, start = setup
    target = next(c for c in "abcdefgh" if not start.text.startswith(c))
    opt = LatentOptimizer(sampler, tok, PARAMS, _cfg(lr=2.0, samples=16, steps=8))
    res = opt.optimize(prompt, start, planted(tok, target), seed=0)
    assert res.start_energy == 1.0 and res.energy == 0.0 and res.text.startswith(target)
    assert res.prefix_changed and res.generated_tokens > 0
    assert [s["step"] for s in res.steps][:2] == [0, 1]


def test_zero_variance_reward_leaves_z_unchanged(setup):
    tok, model, sampler, prompt, start = setup
    opt = LatentOptimizer(sampler, tok, PARAMS, _cfg(steps=3))
    res = opt.optimize(prompt, start, lambda gens: np.ones(len(gens)), seed=0)
    # Every sample scored the same: the advantage is zero, z never moves, so the argmax decode is the
    # start prefix and nothing beats the start answer.
    assert not res.prefix_changed and res.text == start.text and res.energy == 1.0


def test_gradient_mode_descends_a_state_energy_within_the_ball(setup):
    tok, model, sampler, prompt, start = setup
    k = 2
    z0, states = prefix_states(sampler, prompt, start.token_ids, k)
    direction = model.get_output_embeddings().weight[tok.convert_tokens_to_ids("q")].detach()

    def state_energy(h: torch.Tensor) -> torch.Tensor:
        return -(h @ direction)  # lowest along the embedding of "q"

    pool = lambda s: s[:k].mean(dim=0)  # noqa: E731  the optimised states alone
    energy = lambda gens: np.array([0.0 if g.text[:2].count("q") else 1.0 for g in gens])  # noqa: E731
    opt = LatentOptimizer(sampler, tok, PARAMS, _cfg(mode="gradient", min_prefix=k, prefix_fraction=0.0,
                                                            steps=10, lr=1.0, radius=2.0))
    res = opt.optimize(prompt, start, energy, seed=0, state_energy=state_energy, pool=pool)
    assert res.prefix_changed and "q" in res.text[:2] and res.energy < res.start_energy


def test_same_seed_same_output(setup):
    tok, model, sampler, prompt, start = setup
    opt = LatentOptimizer(sampler, tok, PARAMS, _cfg(steps=3))
    energy = lambda gens: np.array([len(g.text) % 3 for g in gens], dtype=float)  # noqa: E731
    a, b = opt.optimize(prompt, start, energy, seed=5), opt.optimize(prompt, start, energy, seed=5)
    assert a.text == b.text and [s["energy"] for s in a.steps] == [s["energy"] for s in b.steps]
