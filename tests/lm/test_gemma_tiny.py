"""The second model family's architecture on a tiny random Gemma-3 built in code: sliding-window
layers (window 4, shorter than every prompt, so they matter) and final logit soft-capping.

Sampling, V2's latent read-out and EBD's proposals must run on it and give the model's own numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from impetus.decoding.evaluate import run_problem
from impetus.energy.logit import ENERGY_COLUMNS, candidate_energy_row, per_token_from_record
from impetus.decoding.proposals import Proposer
from impetus.lm.hf_sampler import HFSampler
from impetus.lm.sampler import SamplingParams
from impetus.lm.scoring import score_candidates
from impetus.lm.trace import trace_energies
from impetus.testing import CHARS, SPECIAL, tiny_tokenizer

SHOTS = "Q: 1+1?\nA: 2.\n\nQ: 2+2?\nA: 4.\n\n"
# few-shot prompts whose rests after the shared prefix differ in length (padding between them)
PROMPTS = [SHOTS + "Q: 3+4?\nA:", SHOTS + "Q: 10+20?\nA:", SHOTS + "Q: 5?\nA:", "xy"]
CAP = 0.5  # soft-capping low enough that the tiny model's logits (|l| < 1) are visibly bent by it


def tiny_gemma(seed: int = 0) -> Gemma3ForCausalLM:
    """4 layers (sliding, sliding, full, sliding), window 4; weights scaled up so greedy text varies
    (the default init makes a random model repeat one token)."""
    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=len(SPECIAL) + len(CHARS), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        sliding_window=4, layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                       "sliding_attention"],
        max_position_embeddings=512, final_logit_softcapping=CAP, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, tie_word_embeddings=True,
    )
    model = Gemma3ForCausalLM(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # Gemma multiplies embeddings by sqrt(hidden) = 8: scale them down
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3 / 8 if "embed" in name else 0.3, generator=gen)
    return model.eval()


@pytest.fixture(scope="module")
def gemma():
    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    tok.padding_side = "left"
    return tiny_gemma(), tok


def sp(**kw) -> SamplingParams:
    return SamplingParams(**{"n": 1, "temperature": 0.8, "top_p": 1.0, "max_new_tokens": 16, **kw})


def _greedy_ref(model, tok, prompt: str, max_new: int) -> list[int]:
    """``model.generate``'s greedy continuation of one unpadded prompt, EOS and after removed."""
    enc = tok([prompt], return_tensors="pt")
    out = model.generate(**enc, do_sample=False, max_new_tokens=max_new, pad_token_id=tok.pad_token_id)
    row = out[0, enc["input_ids"].shape[1]:].tolist()
    return row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row


def test_sliding_layers_cannot_continue(gemma):
    model, tok = gemma
    s = HFSampler(model, tok)
    assert not s.can_continue()
    with pytest.raises(ValueError, match="continuing from a given KV cache is not supported"):
        s.continue_rows([tok("ab")["input_ids"]], sp(), [0], [4], keep_past=True)


@pytest.mark.parametrize("batch_size", [8, 3])
def test_greedy_equals_generate(gemma, batch_size):
    """Shared-prefix prefill, padded batches and (batch 3) refills after rows finish: the tokens of
    model.generate on each prompt alone."""
    model, tok = gemma
    got = HFSampler(model, tok).generate(PROMPTS, sp(n=2, temperature=0, batch_size=batch_size), [0, 1, 2, 3])
    for i, p in enumerate(PROMPTS):
        ref = _greedy_ref(model, tok, p, 16)
        assert got[i][0].token_ids == got[i][1].token_ids == ref
    assert len({t for r in got for g in r for t in g.token_ids}) > 5  # varied text: not vacuous


def test_same_seed_same_samples(gemma):
    model, tok = gemma
    p = sp(n=3, temperature=1.0, top_p=0.9, stop=["\n"])
    a = HFSampler(model, tok).generate(PROMPTS, p, [1, 2, 3, 4])
    b = HFSampler(model, tok).generate(PROMPTS, sp(**{**p.to_dict(), "batch_size": 2}), [1, 2, 3, 4])
    c = HFSampler(model, tok).generate(PROMPTS, p, [5, 6, 7, 8])
    ids = lambda out: [[g.token_ids for g in r] for r in out]  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)
    # the recorded log-probs are the capped model's own
    g = a[0][0]
    full = torch.tensor([tok(PROMPTS[0])["input_ids"] + g.token_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(full).logits[0].float(), -1)
    n0 = full.shape[1] - len(g.token_ids)
    want = logp[n0 - 1 : -1].gather(1, full[0, n0:, None])[:, 0].mean().item()
    assert g.logprob_mean == pytest.approx(want, abs=1e-4)


def test_recorded_energies_equal_teacher_forced(gemma):
    """V1's energies come from the sampler's recording; V2 and EBD score with the teacher-forced
    pass (prompt cache reused across candidates): on sliding layers both must agree."""
    model, tok = gemma
    params = SamplingParams(n=3, temperature=1.0, top_p=1.0, max_new_tokens=12, stop=["\n"], batch_size=4)
    gens = HFSampler(model, tok).generate(PROMPTS, params, [1, 2, 3, 4])
    flat = [(i, g) for i, row in enumerate(gens) for g in row
            if tok(g.text, add_special_tokens=False)["input_ids"] == g.token_ids]  # rows that round-trip
    assert len(flat) >= 8
    ref = score_candidates(model, tok, prompts=[PROMPTS[i] for i, _ in flat], completions=[g.text for _, g in flat],
                           answer_spans=[None] * len(flat), batch_size=5, hidden=True)
    for k, (_, g) in enumerate(flat):
        r = g.record
        per_tok = per_token_from_record(torch.tensor(r["lse"]), torch.tensor(r["tok_logit"]), torch.tensor(r["deepconf"]))
        got = candidate_energy_row(per_tok, None, g.n_tokens)
        for col in ENERGY_COLUMNS:
            assert got[col] == pytest.approx(ref.energies.loc[k, col], abs=1e-3), col
        np.testing.assert_allclose(r["hidden_mean"], ref.hidden_mean[k], atol=1e-4)


def test_state_logits_of_an_answers_states_are_the_models_logits(gemma):
    """V2 decodes ``state_logits`` of an encoded answer's states: it must be what the forward gives,
    soft-capping included (the bare LM head is not)."""
    from impetus.latent.optimize import trace_states

    model, tok = gemma
    s = HFSampler(model, tok)
    prompt, answer = tok(PROMPTS[0])["input_ids"], tok("7. The answer", add_special_tokens=False)["input_ids"]
    h = trace_states(s.encode_answers(prompt, [answer], keep_past=False)[0])
    assert h.shape == (len(answer) + 1, 64)
    with torch.no_grad():
        want = model(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 :]
        got = s.state_logits(h)
        bare = model.get_output_embeddings()(h)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert got.abs().max() < CAP and (bare - want).abs().max() > 0.1


def test_ebd_proposals_reencode_and_record_the_models_values(gemma):
    model, tok = gemma
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids("e")]
    try:
        sampler = HFSampler(model, tok)
        params = SamplingParams(n=1, temperature=1.0, top_p=1.0, max_new_tokens=10, stop=["k"], batch_size=8)
        prompt = tok(PROMPTS[1])["input_ids"]

        def chains(seed):
            proposer = Proposer(sampler, tok, params, [prompt, prompt], seeds=[100, 200])
            assert not proposer.reuse_cache
            starts = proposer.start([tok(a, add_special_tokens=False)["input_ids"] for a in ("30 is", "3")])
            energy = lambda trs: trace_energies(tok, trs, [None] * len(trs))[0]["neg_logprob_mean"].to_numpy()  # noqa: E731
            return run_problem(starts, proposer, energy, tau=1.0, block=2, steps=6, seed=seed), proposer

        (a, prop), (b, _), (c, _) = chains(0), chains(0), chains(5)
        assert a.states == b.states and a.energies == b.energies and a.states != c.states
        assert a.proposed_tokens > 0
        # a proposal's recorded values equal a teacher-forced encoding of the same answer
        outs = prop(prop.start([s[-1] for s in a.states]), [1, 1])
        for out in outs:
            ref = sampler.encode_answers(prompt, [out.ids], keep_past=False)[0]
            np.testing.assert_allclose(out.lse, ref.lse, atol=1e-4)
            np.testing.assert_allclose(out.tok_logit, ref.tok_logit, atol=1e-4)
            np.testing.assert_allclose(out.states, ref.states, atol=1e-4)
    finally:
        model.generation_config.eos_token_id = tok.eos_token_id


def test_power_smc_in_one_loop_equals_reencoded_blocks(gemma, monkeypatch):
    """Sliding-window layers: the particle loop copies cache rows of any layer type, and gives the
    particles that re-encoding every block through ``continue_rows`` gives."""
    from dataclasses import replace

    import impetus.lm.hf_particles as hp
    from impetus.decoding.smc import run_smc_problems
    from impetus.lm.trace import generated_trace

    model, tok = gemma
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids("e")]
    try:
        sampler = HFSampler(model, tok)
        params = SamplingParams(n=1, temperature=0.5, top_p=1.0, max_new_tokens=8, stop=["k"], batch_size=6)
        prompts = [tok(p)["input_ids"] for p in PROMPTS[:3]]
        energy = lambda _k, trs: trace_energies(tok, trs, [None] * len(trs))[0]["neg_logprob_mean"].to_numpy()  # noqa: E731
        runs = [run_smc_problems(sampler, tok, params, prompts, energy, particles=3, block=2, alpha=3.0, tau=0.5,
                                 seed=1, keys=["a", "b", "c"], in_loop=flag) for flag in (True, False)]
        (loop, stats, _), (blocks, by_stats, reused) = runs
        assert not reused
        assert [c.states for c in loop] == [c.states for c in blocks]
        assert [st.resamples for st in stats] == [st.resamples for st in by_stats]
        # soft-capped logits leave the weights even: force copies at every boundary instead
        grown, append = [], hp._Loop._append
        monkeypatch.setattr(hp._Loop, "_append", lambda self, src: (grown.append(len(src)), append(self, src)))
        gens = sampler.sample_particles(prompts, replace(params, n=3), [[7, 8, 9]] * 3, 2, lambda i, v: [0, 0, 1])
        assert grown  # finished particles revived into slots appended to the batch (of sliding-window layers)
        for prompt, gs in zip(prompts, gens):
            for tr in map(generated_trace, gs):
                (ref,) = sampler.encode_answers(prompt, [tr.ids], keep_past=False, temperature=0.5)
                for key in ("lse", "tok_logit", "lse_temp", "states"):
                    np.testing.assert_allclose(getattr(tr, key), getattr(ref, key), atol=1e-4, err_msg=key)
    finally:
        model.generation_config.eos_token_id = tok.eos_token_id
