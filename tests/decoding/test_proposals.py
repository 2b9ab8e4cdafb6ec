"""EBD proposals on a tiny random Llama: reusing the chain's KV cache changes no token and no energy,
chains are deterministic for a seed, and proposals keep their prefix within the length cap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from impetus.decoding.evaluate import chain_rngs, grouped_energy, run_problem
from impetus.decoding.mh import run_chains
from impetus.decoding.proposals import Proposer
from impetus.lm.hf_sampler import HFSampler
from impetus.lm.sampler import SamplingParams
from impetus.lm.trace import trace_energies
from impetus.testing import tiny_llama, tiny_tokenizer

PARAMS = SamplingParams(n=1, temperature=1.0, top_p=1.0, max_new_tokens=10, stop=["k"], batch_size=8, seed=0)


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    tok, model = tiny_tokenizer(), tiny_llama()
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids("e")]
    return tok, HFSampler(model, tok), tok("What is 12 + 7?")["input_ids"]


def _energy(tok):
    return lambda traces: trace_energies(tok, traces, [None] * len(traces))[0]["neg_logprob_mean"].to_numpy()


def _chains(setup, reuse: bool, seed: int = 0):
    tok, sampler, prompt = setup
    proposer = Proposer(sampler, tok, PARAMS, [prompt, prompt], seeds=[100, 200])
    proposer.reuse_cache = reuse
    starts = proposer.start([tok("19 is", add_special_tokens=False)["input_ids"], tok("2", add_special_tokens=False)["input_ids"]])
    return run_problem(starts, proposer, _energy(tok), tau=1.0, block=2, steps=6, seed=seed)


def test_cached_and_reencoded_proposals_agree(setup):
    cached, fresh = _chains(setup, True), _chains(setup, False)
    assert cached.states == fresh.states and cached.accepted == fresh.accepted
    np.testing.assert_allclose(np.array(cached.energies), np.array(fresh.energies), atol=1e-4)
    assert cached.proposed_tokens > 0 and any(a for acc in cached.accepted for a in acc)


def test_chains_are_deterministic_and_seed_sensitive(setup):
    a, b, c = _chains(setup, True), _chains(setup, True), _chains(setup, True, seed=5)
    assert a.states == b.states and a.energies == b.energies
    assert a.states != c.states


def test_proposals_keep_the_prefix_within_the_cap(setup):
    tok, sampler, prompt = setup
    proposer = Proposer(sampler, tok, PARAMS, [prompt] * 3, seeds=[3, 4, 5])
    starts = proposer.start([tok("19 is it 2", add_special_tokens=False)["input_ids"]] * 3)  # 10 tokens
    cuts = [0, 4, PARAMS.max_new_tokens]
    out = proposer(starts, cuts)
    for s, o, t in zip(starts, out, cuts):
        assert o.ids[:t] == s.ids[:t] and len(o) <= PARAMS.max_new_tokens
        assert "k" not in tok.decode(o.ids) and len(o.lse) == len(o) + 1 and len(o.states) == len(o)
    assert out[2] is starts[2]  # a cut at the cap leaves nothing to regenerate


def test_batching_problems_together_changes_no_chain(setup):
    """Chains of two problems run in one batch equal each problem run alone."""
    tok, sampler, prompt = setup
    other = tok("Add 3 and 4:")["input_ids"]
    answers = [tok(a, add_special_tokens=False)["input_ids"] for a in ("19 is", "2", "7")]
    prompts, owners, seeds = [prompt, prompt, other], [0, 0, 1], [100, 200, 300]
    energy = _energy(tok)
    both = Proposer(sampler, tok, PARAMS, prompts, seeds)
    by_owner = lambda rows, s: grouped_energy([owners[c] for c in rows], lambda _k, x: energy(x))(s)  # noqa: E731
    together = run_chains(both.start(answers), both, by_owner, tau=1.0, block=2, steps=5, rng=chain_rngs(9, owners))
    for k, idx in ((0, [0, 1]), (1, [2])):
        alone = Proposer(sampler, tok, PARAMS, [prompts[c] for c in idx], [seeds[c] for c in idx])
        ref = run_chains(alone.start([answers[c] for c in idx]), alone, lambda _rows, s: energy(s), tau=1.0,
                         block=2, steps=5, rng=chain_rngs(9, [k] * len(idx)))
        sub = together.subset(idx)
        assert sub.states == ref.states and sub.accepted == ref.accepted and sub.proposed == ref.proposed
        np.testing.assert_allclose(np.array(sub.energies), np.array(ref.energies), atol=1e-4)


def test_proposals_must_be_the_models_conditional(setup):
    tok, sampler, prompt = setup
    with pytest.raises(ValueError, match="top_p 1"):
        Proposer(sampler, tok, SamplingParams(n=1, temperature=0.8, top_p=0.9, max_new_tokens=4), [prompt], [0])
    with pytest.raises(ValueError, match="temperature > 0"):
        Proposer(sampler, tok, SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=4), [prompt], [0])


def test_power_target_normalisers_recorded_while_decoding_equal_a_teacher_forced_pass(setup):
    """A proposal at temperature 1/alpha records lse(alpha f) beside lse(f); the chain start encoded at the
    same temperature gives the same log Z per step, and Z = sum_v p(v)^alpha checks by brute force."""
    from dataclasses import replace

    from impetus.decoding.proposals import trace_log_norm

    tok, sampler, prompt = setup
    params = replace(PARAMS, temperature=0.5)
    prop = Proposer(sampler, tok, params, [prompt], [4])
    (start,) = prop.start([tok("19", add_special_tokens=False)["input_ids"]])
    (new,) = prop([start], [1])
    (again,) = sampler.encode_answers(prompt, [new.ids], keep_past=False, temperature=0.5)
    z_new, z_again = trace_log_norm(new, 2.0, params.max_new_tokens), trace_log_norm(again, 2.0, params.max_new_tokens)
    np.testing.assert_allclose(z_new, z_again, atol=1e-4)
    assert len(z_new) == len(new) + (len(new) < params.max_new_tokens)  # the ending step, unless the cap ended it
    with torch.no_grad():
        logits = sampler.model(torch.tensor([prompt + new.ids])).logits[0, len(prompt) - 1:].float()
    brute = torch.log((torch.softmax(logits, -1) ** 2).sum(-1)).numpy()[: len(z_new)]
    np.testing.assert_allclose(z_new, brute, atol=1e-4)
    assert (z_new <= 1e-6).all()  # sum_v p^2 <= 1


def test_run_problems_does_not_depend_on_the_batch(setup):
    """Problems chunked 1 per batch or all in one give the same chains (seeds are per chain)."""
    from dataclasses import replace

    from impetus.decoding.evaluate import EBDConfig, run_problems

    tok, sampler, prompt = setup
    prompts = [prompt, tok("Add 3 and 4:")["input_ids"], tok("x")["input_ids"]]
    starts = [[tok(a, add_special_tokens=False)["input_ids"] for a in pair] for pair in (("19", "1 9"), ("7", "8"), ("", "x"))]
    energy = _energy(tok)
    for alpha in (1.0, 2.0):  # the plain tilt, and the power target with proposals at temperature 1/2
        ebd = EBDConfig(n_problems=None, energy="e", chains=2, steps=4, tau=1.0, alpha=alpha, block=2, n_init=1, answer="lowest", kernel="resample", grid={}, search="product",
                        dev_problems=None, n_boot=100, seed=3, progress=False)
        params = replace(PARAMS, temperature=1 / alpha)
        runs = [run_problems(sampler, tok, replace(params, batch_size=b), prompts, starts, lambda _k, s: energy(s), ebd)
                for b in (2, 64)]
        (small, reuse), (big, _) = runs
        assert reuse and [c.states for c in small] == [c.states for c in big]
        assert [c.proposed for c in small] == [c.proposed for c in big] and sum(c.proposed_tokens for c in big) > 0


def test_a_banned_first_token_changes_and_nothing_else_of_the_record(setup):
    """``continue_rows(ban=...)``: the first new token is never the banned one, and the recorded
    statistics of that step are those of the full distribution (a teacher-forced pass gives them)."""
    tok, sampler, prompt = setup
    params = PARAMS
    free = sampler.continue_rows([prompt] * 6, params, list(range(6)), [4] * 6)
    banned = sampler.continue_rows([prompt] * 6, params, list(range(6)), [4] * 6, ban=[g.token_ids[0] for g in free])
    assert all(b.token_ids and b.token_ids[0] != f.token_ids[0] for f, b in zip(free, banned))
    for gen in banned:
        (forced,) = sampler.encode_answers(prompt, [list(gen.token_ids)], keep_past=False, temperature=1.0)
        assert np.allclose(gen.record["lse"][: len(gen.token_ids)], forced.lse[: len(gen.token_ids)], atol=1e-4)
        assert np.allclose(gen.record["tok_logit"], forced.tok_logit, atol=1e-4)
    with pytest.raises(ValueError, match="banned tokens"):
        sampler.continue_rows([prompt], params, [0], [4], ban=[1, 2])


def test_token_logq_of_a_trace_is_the_tempered_log_prob(setup):
    from impetus.decoding.proposals import trace_token_logq

    tok, sampler, prompt = setup
    answer = tok("19 is", add_special_tokens=False)["input_ids"]
    (trace,) = sampler.encode_answers(prompt, [answer], keep_past=False, temperature=0.5)
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logits = sampler.model(ids).logits[0, len(prompt) - 1: -1].float()
    want = torch.log_softmax(logits / 0.5, -1)[torch.arange(len(answer)), torch.tensor(answer)]
    got = [trace_token_logq(trace, t, 0.5) for t in range(len(answer))]
    assert np.allclose(got, want.numpy(), atol=1e-4)


def test_differing_chains_do_not_depend_on_the_batch_and_always_propose_a_change(setup):
    from dataclasses import replace

    from impetus.decoding.evaluate import EBDConfig, run_problems

    tok, sampler, prompt = setup
    prompts = [prompt, tok("Add 3 and 4:")["input_ids"]]
    starts = [[tok(a, add_special_tokens=False)["input_ids"] for a in pair] for pair in (("19", "1 9"), ("7", "8"))]
    energy = _energy(tok)
    # alpha 1: at alpha 2 this near-uniform random model's p^2 rejects every longer answer
    ebd = EBDConfig(n_problems=None, energy="e", chains=2, steps=5, tau=1.0, alpha=1.0, block=2, n_init=1,
                    answer="lowest", kernel="differ", grid={}, search="product", dev_problems=None, n_boot=100, seed=3,
                    progress=False)
    (small, _), (big, _) = (run_problems(sampler, tok, replace(PARAMS, batch_size=b), prompts, starts,
                                         lambda _k, s: energy(s), ebd) for b in (2, 64))
    assert [c.states for c in small] == [c.states for c in big]
    for chains in big:
        proposals, moves, rejections = chains.move_counts()
        assert proposals == 10 and moves + rejections == proposals and moves > 0


def test_smc_particles_grown_block_by_block_equal_a_teacher_forced_pass(setup):
    """Power-SMC's step: an empty answer encoded once, then extended a block at a time from its cache,
    records the same values (and log Z, its weight) as one teacher-forced pass over the final answer."""
    from dataclasses import replace

    from impetus.decoding.proposals import trace_log_norm, trace_log_weight

    tok, sampler, prompt = setup
    params = replace(PARAMS, temperature=0.5)
    prop = Proposer(sampler, tok, params, [prompt] * 2, [4, 5])
    (empty,) = sampler.encode_answers(prompt, [[]], keep_past=True, temperature=0.5)
    assert len(empty) == 0 and len(empty.lse) == 1
    states, done, blocks = [empty, empty], [False, False], 0
    while not all(done):
        rows = [c for c in range(2) if not done[c]]
        for c, (s, d) in zip(rows, prop.extend(rows, [states[c] for c in rows], block=3)):
            assert len(s) - len(states[c]) <= 3 and s.ids[: len(states[c])] == states[c].ids
            states[c], done[c] = s, d
        blocks += 1
    assert blocks >= 2 and states[0].ids != states[1].ids  # several blocks; the two seeds differ
    for s in states:
        (again,) = sampler.encode_answers(prompt, [s.ids], keep_past=False, temperature=0.5)
        for key in ("lse", "tok_logit", "lse_temp"):
            np.testing.assert_allclose(getattr(s, key), getattr(again, key), atol=1e-4)
        whole = trace_log_norm(again, 2.0, params.max_new_tokens).sum()
        assert trace_log_weight(s, True, 2.0, params.max_new_tokens) == pytest.approx(whole, abs=1e-3)


def test_smc_with_and_without_the_cache_agree(setup):
    from dataclasses import replace

    from impetus.decoding.smc import run_smc_problems

    tok, sampler, prompt = setup
    prompts = [prompt, tok("Add 3 and 4:")["input_ids"]]
    params, energy = replace(PARAMS, temperature=0.5), _energy(tok)
    runs = []
    for reuse in (True, False):
        sampler.can_continue = (lambda r=reuse: r)  # the model's cache cannot be continued: re-encode instead
        runs.append(run_smc_problems(sampler, tok, params, prompts, lambda _k, s: energy(s), particles=4, block=2,
                                     alpha=2.0, tau=0.5, seed=3, keys=["a", "b"], in_loop=False))
    del sampler.can_continue
    (cached, stats, reused), (fresh, _, not_reused) = runs
    assert reused and not not_reused
    assert [c.states for c in cached] == [c.states for c in fresh]
    np.testing.assert_allclose([c.energies for c in cached], [c.energies for c in fresh], atol=1e-4)
    assert all(len(c.states) == 4 for c in cached) and all(st.resamples >= 0 for st in stats)
