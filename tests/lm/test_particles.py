"""Power-SMC's particles in the HF backend's own loop (``sample_particles``) on tiny random models:
rows copied by ancestor at block boundaries carry exactly the copied particle's tokens, records and
cache (each final particle equals a teacher-forced pass over its answer), and the particles equal
those grown block by block through ``continue_rows`` whatever the batch."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import impetus.lm.hf_particles as hp
from impetus.decoding.smc import run_smc_problems
from impetus.lm.hf_sampler import HFSampler
from impetus.lm.sampler import ParticleSampler, SamplingParams
from impetus.lm.trace import generated_trace, trace_energies
from impetus.testing import tiny_llama, tiny_tokenizer

PARAMS = SamplingParams(n=4, temperature=0.5, top_p=1.0, max_new_tokens=10, stop=["k"], batch_size=8, seed=0)
QUESTIONS = ["What is 12 + 7?", "Add 3 and 4:", "What is 5 - 2?"]


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    tok, model = tiny_tokenizer(), tiny_llama(layers=3)
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids("e")]
    return tok, HFSampler(model, tok, hidden_layers=(1,)), [tok(q)["input_ids"] for q in QUESTIONS]


def test_copied_particles_record_what_a_teacher_forced_pass_gives(setup, monkeypatch):
    tok, sampler, prompts = setup
    assert isinstance(sampler, ParticleSampler)
    seen, reused = [], []
    copy = hp._Loop._copy

    def spy(self, p, anc):  # counts copies that revive a finished particle in a free slot
        free = sum(r is None for r in self.slots)
        copy(self, p, anc)
        reused.append(free - sum(r is None for r in self.slots))

    monkeypatch.setattr(hp._Loop, "_copy", spy)

    def resample(i, views):  # copy at every boundary: halves duplicated, then a rotation
        seen.append((i, [(v.n_tokens, v.finished) for v in views]))
        return [j // 2 * 2 for j in range(4)] if len(seen) % 2 else [(j + 1) % 4 for j in range(4)]

    gens = sampler.sample_particles(prompts, PARAMS, [[10 * i + j for j in range(4)] for i in range(3)], 2, resample)
    assert len(seen) >= 6
    for _, views in seen:  # every unfinished particle sits at the same boundary
        assert len({n for n, done in views if not done}) <= 1
    shared = 0
    for prompt, gs in zip(prompts, gens):
        traces = [generated_trace(g) for g in gs]
        shared += sum(a.ids[:2] == b.ids[:2] and len(a) > 2 for a in traces for b in traces if a is not b)
        for tr in traces:
            (ref,) = sampler.encode_answers(prompt, [tr.ids], keep_past=False, temperature=PARAMS.temperature)
            for key in ("lse", "tok_logit", "deepconf", "lse_temp", "states", "prompt_state"):
                np.testing.assert_allclose(getattr(tr, key), getattr(ref, key), atol=1e-4, err_msg=key)
            np.testing.assert_allclose(tr.layer_states[1], ref.layer_states[1], atol=1e-4)
    assert shared > 0  # copies share their ancestor's first block and then go on their own
    assert max(reused) > 0  # a finished particle's copy of a live one took a free slot


def _smc(setup, in_loop: bool, batch_size: int):
    tok, sampler, prompts = setup
    params = replace(PARAMS, n=1, batch_size=batch_size)
    energy = lambda _k, s: trace_energies(tok, s, [None] * len(s))[0]["neg_logprob_mean"].to_numpy()  # noqa: E731
    return run_smc_problems(sampler, tok, params, prompts, energy, particles=4, block=2, alpha=2.0, tau=0.5, seed=3,
                            keys=["a", "b", "c"], in_loop=in_loop)


def test_one_loop_equals_block_by_block_whatever_the_batch(setup):
    blocks, by_stats, _ = _smc(setup, False, 8)
    assert sum(st.resamples for st in by_stats) > 0  # the copies are exercised
    for batch_size in (4, 8, 12):  # one problem at a time, problems joining as others end, all at once
        loop, stats, reused = _smc(setup, True, batch_size)
        assert reused
        assert [c.states for c in loop] == [c.states for c in blocks]
        assert [c.proposed for c in loop] == [c.proposed for c in blocks]
        np.testing.assert_allclose([c.energies for c in loop], [c.energies for c in blocks], atol=1e-4)
        assert [(st.resamples, round(st.final_ess, 4)) for st in stats] == \
            [(st.resamples, round(st.final_ess, 4)) for st in by_stats]


def test_bad_calls_are_refused(setup):
    tok, sampler, prompts = setup
    with pytest.raises(ValueError, match="block >= 1"):
        sampler.sample_particles(prompts, PARAMS, [[0] * 4] * 3, 0, lambda i, v: None)
    with pytest.raises(ValueError, match="4 seeds for each of 3 prompts"):
        sampler.sample_particles(prompts, PARAMS, [[0] * 3] * 3, 2, lambda i, v: None)
    with pytest.raises(ValueError, match="ancestors for 4 particles"):
        sampler.sample_particles(prompts, PARAMS, [[0] * 4] * 3, 2, lambda i, v: [0, 0])
