"""V2's LatentSeek objective, the exact top-k policy gradient, and gradient mode's step size (issue 27)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from impetus.latent.optimize import LatentOptimizer, _Job, trace_states
from impetus.latent.reuse import encode_starts

from test_optimize import PARAMS, _cfg, by_text, setup  # noqa: F401 - the fixture


def _ranked(sampler, start, q: int = 0) -> list[int]:
    with torch.no_grad():
        return sampler.state_logits(trace_states(start))[q].argsort(descending=True).tolist()


def _first_token_energy(target: int):
    """Energy 0 when the answer's first token is ``target``, else 1: R favours that token."""
    return lambda traces: np.array([0.0 if t.ids[:1] == [target] else 1.0 for t in traces])


def test_latentseek_changes_a_planted_token_when_r_favours_it(setup):
    tok, model, sampler, prompt, start = setup
    tr = encode_starts(sampler, [(prompt, start.token_ids)])[0]
    target = _ranked(sampler, tr)[1]  # the runner-up: one push away from the argmax lands on it
    cfg = _cfg(mode="latentseek", positions="prefix", prefix_fraction=0.01, steps=10, lr=0.5, patience=None)
    res = LatentOptimizer(sampler, tok, PARAMS, cfg).optimize_many(
        [(prompt, start.token_ids)], lambda _o, g: _first_token_energy(target)(g), [0], pools=[(0.5, 0.5, 0.0)])[0]
    assert res.window == (0, 1) and res.moved and res.token_ids[0] == target and res.energy == 0.0
    assert res.steps[-1]["step"] < 10  # stopped early: the answer matched the pool's best energy
    # with R favouring the current token instead, z is only reinforced: nothing changes
    keep = _ranked(sampler, tr)[0]
    res2 = LatentOptimizer(sampler, tok, PARAMS, cfg).optimize_many(
        [(prompt, start.token_ids)], lambda _o, g: _first_token_energy(keep)(g), [0], pools=[(0.5, 0.5, -1.0)])[0]
    assert not res2.moved and res2.token_ids[0] == keep


def test_latentseek_returns_the_last_answer_not_the_best(setup):
    tok, model, sampler, prompt, start = setup
    energy = by_text(tok, lambda text: float(len(text) % 5))
    cfg = _cfg(mode="latentseek", positions="prefix", prefix_fraction=0.3, steps=4, lr=2.0, patience=None)
    res = LatentOptimizer(sampler, tok, PARAMS, cfg).optimize(prompt, start.token_ids, energy, seed=0)
    assert res.energy == res.steps[-1]["energy"] == res.steps[-1]["best_energy"]
    # its control is the step-0 decode itself, not the lower energy of start and decode
    zero = LatentOptimizer(sampler, tok, PARAMS, dataclasses.replace(cfg, steps=0)).optimize(
        prompt, start.token_ids, energy, seed=0)
    assert (res.control_text, res.control_energy) == (zero.text, zero.energy) == (zero.control_text, zero.control_energy)


def test_topk_pg_moves_to_the_best_rewarded_token(setup):
    tok, model, sampler, prompt, start = setup
    tr = encode_starts(sampler, [(prompt, start.token_ids)])[0]
    target = _ranked(sampler, tr)[3]  # the 4th likeliest first token: only the exact gradient sees it
    cfg = _cfg(mode="topk_pg", positions="prefix", prefix_fraction=0.5, steps=30, lr=0.5, samples=6, patience=None)
    res = LatentOptimizer(sampler, tok, PARAMS, cfg).optimize(prompt, start.token_ids, _first_token_energy(target),
                                                              seed=0)
    assert res.window == (0, 1)  # one position, whatever the prefix fraction
    assert res.moved and res.token_ids[0] == target and res.energy == 0.0
    # all rewards equal: the gradient is zero and z stays
    flat = LatentOptimizer(sampler, tok, PARAMS, cfg).optimize(prompt, start.token_ids,
                                                               lambda g: np.ones(len(g)), seed=0)
    assert not flat.moved


def test_topk_pg_looks_up_known_answers_instead_of_generating_them_again(setup, monkeypatch, forget_answers):
    """The decode of z whose argmax is one of the top-k tokens is that token's greedy answer, made once
    for the gradient: the same answers and energies whether looked up or generated again, fewer rows
    generated, and only generated tokens counted."""
    tok, model, sampler, prompt, start = setup
    tr = encode_starts(sampler, [(prompt, start.token_ids)])[0]
    target = _ranked(sampler, tr)[3]
    cfg = _cfg(mode="topk_pg", positions="prefix", prefix_fraction=0.5, steps=8, lr=0.5, samples=6, patience=None)

    def run(forget: bool) -> tuple[object, int]:
        rows = []
        opt = LatentOptimizer(sampler, tok, PARAMS, cfg)
        regenerate = opt.regenerate
        monkeypatch.setattr(opt, "regenerate", lambda jobs, windows: rows.append(len(jobs)) or regenerate(jobs, windows))
        if forget:
            forget_answers(opt)  # the behaviour before the lookup: every answer made again
        res = opt.optimize(prompt, start.token_ids, _first_token_energy(target), seed=0)
        return res, sum(rows)

    looked_up, rows_looked_up = run(False)
    generated, rows_generated = run(True)
    assert looked_up.moved and looked_up.token_ids[0] == target
    assert [s["energy"] for s in looked_up.steps] == [s["energy"] for s in generated.steps]
    assert (looked_up.text, looked_up.energy) == (generated.text, generated.energy)
    # control, the k answers, one decode a step; looked up, the top token's answer is the control's
    assert rows_generated == 1 + 6 + 8 and rows_looked_up == 1 + 5
    assert looked_up.generated_tokens < generated.generated_tokens


def test_gradient_mode_lr_is_a_step_size(setup):
    """Adam's first step is lr x sign(g) whatever lr, then the ball clipped it: lr 0.5 and 2 gave the same
    latents. Now a step is lr x radius long (per token, relative to |z0|): half the ball, or all of it."""
    tok, model, sampler, prompt, start = setup
    direction = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    zs = {}
    for lr in (0.5, 2.0):
        opt = LatentOptimizer(sampler, tok, PARAMS, _cfg(mode="gradient", positions="spilled", window=2, lr=lr,
                                                         radius=0.5))
        job = _Job(prompt=list(prompt), start=encode_starts(sampler, [(prompt, start.token_ids)])[0], seed=0)
        opt._prepare(job)
        z0 = job.z0.clone()
        opt._descend([(0, job)], lambda h: (h @ torch.cat([direction, direction])[: h.shape[-1]]).sum(-1),
                     lambda s, _t: s.mean(dim=0))
        zs[lr] = job.z.detach().clone()
        move = (zs[lr] - z0).norm(dim=-1) / z0.norm(dim=-1)
        assert move.max() == pytest.approx(min(lr, 1.0) * 0.5, rel=1e-4)  # lr x radius, clipped to the ball
    assert not torch.allclose(zs[0.5], zs[2.0], atol=1e-4)
