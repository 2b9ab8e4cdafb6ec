"""V2 latent optimisation on the tiny random Llama with planted energies whose minimum is known."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from impetus.latent.optimize import LatentConfig, LatentOptimizer, choose_window, token_signals, trace_states
from impetus.lm.hf_sampler import HFSampler
from impetus.lm.sampler import SamplingParams
from impetus.testing import tiny_llama, tiny_tokenizer

PARAMS = SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=8, stop=["\n"], batch_size=8, seed=0)


def _cfg(**kw) -> LatentConfig:
    base = dict(mode="reinforce", positions="prefix", prefix_fraction=0.25, window=1, steps=6, lr=0.5, samples=8,
                radius=1.0, patience=None)
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
    return by_text(tok, lambda text: 0.0 if text.startswith(target) else 1.0)


def by_text(tok, fn):
    """An energy of answer traces from their decoded text."""
    return lambda traces: np.array([fn(tok.decode(t.ids)) for t in traces], dtype=float)


def test_reinforce_lowers_a_planted_energy_and_changes_the_prefix(setup):
    tok, model, sampler, prompt, start = setup
    target = next(c for c in "abcdefgh" if not start.text.startswith(c))
    opt = LatentOptimizer(sampler, tok, PARAMS, _cfg(lr=2.0, samples=16, steps=8))
    res = opt.optimize(prompt, start.token_ids, planted(tok, target), seed=0)
    assert res.start_energy == 1.0 and res.energy == 0.0 and res.text.startswith(target)
    assert res.prefix_changed and res.generated_tokens > 0
    assert [s["step"] for s in res.steps][:2] == [0, 1]


def test_zero_variance_reward_leaves_z_unchanged(setup):
    tok, model, sampler, prompt, start = setup
    opt = LatentOptimizer(sampler, tok, PARAMS, _cfg(steps=3))
    res = opt.optimize(prompt, start.token_ids, lambda gens: np.ones(len(gens)), seed=0)
    # Every sample scored the same: the advantage is zero, z never moves, so the argmax decode is the
    # start prefix and nothing beats the start answer.
    assert not res.prefix_changed and res.text == start.text and res.energy == 1.0


def test_gradient_mode_descends_a_state_energy_within_the_ball(setup):
    tok, model, sampler, prompt, start = setup
    direction = model.get_output_embeddings().weight[tok.convert_tokens_to_ids("q")].detach()

    def state_energy(h: torch.Tensor) -> torch.Tensor:
        return -(h @ direction)  # lowest along the embedding of "q"

    # window = the states predicting answer tokens 0..2; those predicting tokens 1 and 2 sit at tokens 0 and 1,
    # the first two pooled answer states
    pool = lambda s, _start: s[:2].mean(dim=0)  # noqa: E731 (the start trace: for further layers)
    energy = by_text(tok, lambda text: 0.0 if text[1:3].count("q") else 1.0)
    frac = 3 / len(start.token_ids)
    opt = LatentOptimizer(sampler, tok, PARAMS, _cfg(mode="gradient", prefix_fraction=frac, steps=10, lr=1.0,
                                                            radius=2.0))
    res = opt.optimize(prompt, start.token_ids, energy, seed=0, state_energy=state_energy, pool=pool)
    assert res.window == (0, 3) and res.moved
    assert res.prefix_changed and "q" in res.text[1:3] and res.energy < res.start_energy


def test_the_signal_rules_pick_a_planted_unlikely_token(setup):
    """An answer whose token 3 is the model's least likely one there: surprisal and spilled energy peak
    at it, so the window starts there; the prefix rule starts at 0."""
    tok, model, sampler, prompt, start = setup
    greedy = sampler.generate([prompt], dataclasses.replace(PARAMS, stop=[]), [0])[0][0].token_ids
    assert len(greedy) >= 6
    states = lambda ids: trace_states(sampler.encode_answers(prompt, [ids], keep_past=False)[0])  # noqa: E731
    with torch.no_grad():
        logits = sampler.state_logits(states(greedy[:3]))
    planted = greedy[:3] + [int(logits[3].argmin())] + greedy[4:]
    with torch.no_grad():
        signals = token_signals(sampler.state_logits(states(planted)), planted)
    assert int(np.argmax(signals["surprisal"])) == 3 and int(np.argmax(signals["spilled"])) == 3
    assert choose_window(signals, "spilled", len(planted), 0.2, 2) == (3, 2)
    assert choose_window(signals, "prefix", len(planted), 0.25, 2) == (0, 2)
    opt = LatentOptimizer(sampler, tok, PARAMS, _cfg(positions="surprisal", window=2, steps=0))
    # energy: 0 for the answers that do not carry the planted token at 3, so the control (which re-decodes the
    # window from the unoptimised states: the greedy token comes back) wins over the start
    res = opt.optimize(prompt, planted, lambda traces: np.array([float(t.ids[3:4] == planted[3:4]) for t in traces]),
                       seed=0)
    assert res.window == (3, 2) and res.token_ids[:3] == planted[:3] and res.token_ids[3] == greedy[3]
    assert res.control_text == res.text and res.energy == 0.0 and res.start_energy == 1.0


def test_zero_steps_is_the_control(setup):
    tok, model, sampler, prompt, start = setup
    energy = by_text(tok, lambda text: len(text) % 3)
    res = LatentOptimizer(sampler, tok, PARAMS, _cfg(steps=0, positions="spilled", window=2)).optimize(
        prompt, start.token_ids, energy, seed=3)
    assert (res.text, res.energy, res.generated_tokens) == (res.control_text, res.control_energy, res.control_tokens)
    assert not res.moved and len(res.steps) == 1
    # With steps, step 0 is the same control, and the answer is never worse than it.
    more = LatentOptimizer(sampler, tok, PARAMS, _cfg(steps=3, positions="spilled", window=2)).optimize(
        prompt, start.token_ids, energy, seed=3)
    assert (more.control_text, more.control_energy) == (res.control_text, res.control_energy)
    assert more.energy <= more.control_energy and more.generated_tokens > more.control_tokens


def test_batched_answers_equal_one_at_a_time(setup):
    tok, model, sampler, prompt, start = setup
    other = sampler.generate([tok("Q: 3+5?\nA:")["input_ids"]], PARAMS, [1])[0][0]
    items = [(prompt, start.token_ids), (tok("Q: 3+5?\nA:")["input_ids"], other.token_ids)]
    energy = by_text(tok, lambda text: len(text) % 3)
    def opt() -> LatentOptimizer:  # a fresh one each time: no continuation is looked up from another run
        return LatentOptimizer(sampler, tok, PARAMS, _cfg(steps=3, samples=4))

    together = opt().optimize_many(items, lambda owners, gens: energy(gens), [7, 8])
    alone = [opt().optimize(p, a, energy, seed=s) for (p, a), s in zip(items, [7, 8])]
    assert [r.text for r in together] == [r.text for r in alone]
    assert [[s["energy"] for s in r.steps] for r in together] == [[s["energy"] for s in r.steps] for r in alone]


def test_same_seed_same_output(setup):
    tok, model, sampler, prompt, start = setup
    energy = by_text(tok, lambda text: len(text) % 3)
    a, b = (LatentOptimizer(sampler, tok, PARAMS, _cfg(steps=3)).optimize(prompt, start.token_ids, energy, seed=5)
            for _ in range(2))
    assert a.text == b.text and [s["energy"] for s in a.steps] == [s["energy"] for s in b.steps]


def test_accuracy_after_reads_each_answer_at_the_step_or_where_patience_stopped_it():
    from impetus.latent.evaluate import accuracy_after

    rows = pd.DataFrame({"problem_id": ["a", "b"], "trace": [
        [{"best_text": "1"}, {"best_text": "2"}, {"best_text": "7"}],  # right from step 2 on
        [{"best_text": "7"}, {"best_text": "3"}],  # right at step 0, stopped after step 1
    ]})
    acc = accuracy_after(rows, [0, 1, 2, 5], lambda _pid, text: (text, text == "7"))
    assert acc == {0: 0.5, 1: 0.0, 2: 0.5, 5: 0.5}


def test_regenerate_makes_each_continuation_once_and_optimisers_can_share_them(setup, counting_rows):
    """A greedy continuation depends only on the tokens before the window, the window and the cap: rows
    asked for twice in one call, or again later, or by another optimiser sharing the store, are made once,
    and equal what a fresh optimiser makes."""
    from impetus.latent.optimize import _Job
    from impetus.latent.reuse import encode_starts

    tok, model, sampler, prompt, start = setup
    tr = encode_starts(sampler, [(prompt, start.token_ids)])[0]
    jobs = [_Job(prompt=list(prompt), start=tr, seed=s, p=p) for s, p in [(0, 1), (1, 1), (2, 1), (3, 2)]]
    windows = [[5], [5], [6], [5]]  # the first two are one continuation (the seed does not matter: greedy)
    fresh = LatentOptimizer(sampler, tok, PARAMS, _cfg())
    alone = [fresh.regenerate([j], [w])[0].ids for j, w in zip(jobs, windows)]
    rows = counting_rows(sampler)
    first = LatentOptimizer(sampler, tok, PARAMS, _cfg())
    made = first.regenerate(jobs, windows)
    assert rows == [3] and [t.ids for t in made] == alone
    assert made[0].ids == made[1].ids and made[0].ids[1] == 5 and made[3].ids[2] == 5
    again = LatentOptimizer(sampler, tok, PARAMS, _cfg(mode="gradient"), first.reuse)
    assert [t.ids for t in again.regenerate(jobs[::-1], windows[::-1])] == [t.ids for t in made[::-1]]
    seven = first.regenerate(jobs[2:3], [[7]])[0].ids
    assert rows == [3, 1]  # only the new window was generated
    assert seven == LatentOptimizer(sampler, tok, PARAMS, _cfg()).regenerate(jobs[2:3], [[7]])[0].ids


def test_a_window_decoded_again_is_looked_up_and_its_tokens_counted_once(setup, monkeypatch, forget_answers):
    """Sampled REINFORCE windows repeat (and so do decodes whose argmax did not move): the answers and
    energies equal generating every one again, and the tokens counted are exactly those of the rows
    generated, each window once."""
    tok, model, sampler, prompt, start = setup
    energy = by_text(tok, lambda text: len(text) % 3)
    cfg = _cfg(steps=4, samples=8, positions="spilled", window=1)

    def run(forget: bool):
        rows: list[int] = []
        opt = LatentOptimizer(sampler, tok, PARAMS, cfg)
        regenerate = opt.regenerate

        def counted(jobs, windows):
            made = regenerate(jobs, windows)
            rows.extend(len(t) - j.p - len(w) for j, w, t in zip(jobs, windows, made))
            return made

        monkeypatch.setattr(opt, "regenerate", counted)
        if forget:
            forget_answers(opt)  # the behaviour before the lookup: every answer made again
        return opt.optimize(prompt, start.token_ids, energy, seed=0), rows

    (kept, rows_kept), (again, rows_again) = run(False), run(True)
    assert (kept.text, kept.energy, kept.control_text) == (again.text, again.energy, again.control_text)
    assert [s["energy"] for s in kept.steps] == [s["energy"] for s in again.steps]
    assert len(rows_kept) < len(rows_again)  # repeats happened, and were not generated
    assert kept.generated_tokens == sum(rows_kept) < again.generated_tokens == sum(rows_again)
