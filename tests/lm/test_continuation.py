"""Continuing answers from a KV cache (EBD proposals) changes nothing but the work done.

- continuing from a finished row's cache gives exactly the tokens and recorded values that
  re-encoding prompt + prefix gives (same seeds);
- a continuation's recorded values spliced after the kept prefix's equal a teacher-forced pass
  over the whole answer (:meth:`HFSampler.encode_answers`), so EBD's energies need no pass;
- per-row caps, stop strings straddling the kept prefix, and models that cannot continue.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from impetus.lm.hf_sampler import HFSampler
from impetus.lm.sampler import SamplingParams
from impetus.lm.hf_encode import encode_traces
from impetus.lm.trace import continued, cut_at_stop, trace_energies
from impetus.testing import tiny_llama, tiny_tokenizer

PARAMS = SamplingParams(n=1, temperature=1.0, top_p=1.0, max_new_tokens=12, batch_size=8, seed=0)
ARRAYS = ("lse", "tok_logit", "deepconf", "states")


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    tok, model = tiny_tokenizer(), tiny_llama()
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids("e")]
    sampler = HFSampler(model, tok)
    prompts = [tok("What is 12 + 7?")["input_ids"], tok("x")["input_ids"], tok("Add 3 and 4, then 5:")["input_ids"]]
    first = sampler.continue_rows(prompts, PARAMS, [1, 2, 3], [PARAMS.max_new_tokens] * 3, keep_past=True)
    return tok, model, sampler, prompts, first


def _cuts(gens):
    return [min(len(g.token_ids), c) for g, c in zip(gens, (0, 3, 5))]


def test_continuing_from_the_cache_equals_reencoding(setup):
    tok, _, sampler, prompts, gens = setup
    cuts = _cuts(gens)
    heads = [p + g.token_ids[:t] for p, g, t in zip(prompts, gens, cuts)]
    caps = [PARAMS.max_new_tokens - t for t in cuts]
    cached = sampler.continue_rows(heads, PARAMS, [7, 8, 9], caps, past=[g.past for g in gens])
    fresh = sampler.continue_rows(heads, PARAMS, [7, 8, 9], caps)
    assert any(len(g.token_ids) > 2 for g in cached)  # not vacuous
    for a, b in zip(cached, fresh):
        assert a.token_ids == b.token_ids
        for key in ARRAYS:
            np.testing.assert_allclose(a.record[key], b.record[key], atol=1e-4, rtol=1e-4)


def test_past_holds_prompt_and_all_but_the_last_token(setup):
    _, _, _, prompts, gens = setup
    for p, g in zip(prompts, gens):
        n = g.past[0][0].shape[-2]
        assert len(p) + g.n_tokens - 1 <= n <= len(p) + g.n_tokens + 1


def test_spliced_record_equals_a_teacher_forced_pass(setup):
    tok, model, sampler, prompts, gens = setup
    starts = encode_traces(model, tok, prompts[0], [gens[0].token_ids, gens[2].token_ids[:4], []], keep_past=True)
    # the sampler's own record of gens[0] equals the teacher-forced trace of the same tokens
    for key in ("lse", "tok_logit", "deepconf", "states"):
        np.testing.assert_allclose(getattr(starts[0], key), gens[0].record[key], atol=1e-4, rtol=1e-4)
    for tr in starts:
        t = min(2, len(tr))
        (gen,) = sampler.continue_rows([prompts[0] + tr.ids[:t]], PARAMS, [11], [PARAMS.max_new_tokens - t],
                                       past=[tr.past], keep_past=True)
        spliced = continued(tr, t, gen)
        (ref,) = encode_traces(model, tok, prompts[0], [spliced.ids], keep_past=False)
        assert spliced.ids[:t] == tr.ids[:t] and len(spliced) <= PARAMS.max_new_tokens
        for key in ("lse", "tok_logit", "deepconf", "states"):
            np.testing.assert_allclose(getattr(spliced, key), getattr(ref, key), atol=1e-4, rtol=1e-4)
        e1, h1 = trace_energies(tok, [spliced], [(0, 2)])
        e2, h2 = trace_energies(tok, [ref], [(0, 2)])
        np.testing.assert_allclose(e1.to_numpy(float), e2.to_numpy(float), atol=1e-3)
        np.testing.assert_allclose(h1["hidden_answer"], h2["hidden_answer"], atol=1e-4)


def test_forced_tokens_are_recorded_as_a_teacher_forced_pass_records_them(setup):
    """V2's answers: keep 2 tokens, emit 2 forced window tokens, then decode greedily; the spliced trace
    equals a teacher-forced pass over the result, so V2's energies need no pass either."""
    tok, model, sampler, prompts, gens = setup
    (tr,) = encode_traces(model, tok, prompts[2], [gens[2].token_ids], keep_past=True)
    window = tok("zz", add_special_tokens=False)["input_ids"]
    greedy = SamplingParams(**{**PARAMS.to_dict(), "temperature": 0.0})
    (gen,) = sampler.continue_rows([prompts[2] + tr.ids[:2]], greedy, [5], [PARAMS.max_new_tokens - 2],
                                   past=[tr.past], forced=[window])
    spliced = continued(tr, 2, gen)
    assert spliced.ids[:4] == tr.ids[:2] + window and len(spliced) > 4
    (ref,) = encode_traces(model, tok, prompts[2], [spliced.ids], keep_past=False)
    for key in ("lse", "tok_logit", "deepconf", "states"):
        np.testing.assert_allclose(getattr(spliced, key), getattr(ref, key), atol=1e-4, rtol=1e-4)
    # after the window, the tokens are the greedy continuation of prompt + kept + window
    (plain,) = sampler.continue_rows([prompts[2] + spliced.ids[:4]], greedy, [5], [PARAMS.max_new_tokens - 4])
    assert spliced.ids[4:] == plain.token_ids


def test_trace_energies_equal_score_candidates(setup):
    from impetus.lm.scoring import score_candidates

    tok, model, _, _, _ = setup
    prompt, text = "What is 12 + 7?", "19 is it"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    (tr,) = encode_traces(model, tok, tok(prompt)["input_ids"], [ids], keep_past=False)
    table, hidden = trace_energies(tok, [tr], [(0, 2)])
    ref = score_candidates(model, tok, [prompt], [text], [(0, 2)], hidden=True)
    np.testing.assert_allclose(table.to_numpy(float), ref.energies.to_numpy(float), atol=1e-3)
    np.testing.assert_allclose(hidden["hidden_mean"], ref.hidden_mean, atol=1e-4)
    np.testing.assert_allclose(hidden["hidden_answer"], ref.hidden_answer, atol=1e-4)


def test_per_row_caps(setup):
    _, _, sampler, prompts, _ = setup
    gens = sampler.continue_rows(prompts, PARAMS, [4, 5, 6], [1, 3, 12])
    assert all(len(g.token_ids) <= c for g, c in zip(gens, (1, 3, 12)))
    assert all(len(g.token_ids) == c for g, c in zip(gens, (1, 3, 12)) if g.finish_reason == "length")
    assert any(g.finish_reason == "length" for g in gens[:2])  # a cap was reached: not vacuous
    with pytest.raises(ValueError, match="3 prompts but 3 seeds, 2 caps"):
        sampler.continue_rows(prompts, PARAMS, [4, 5, 6], [1, 3])


def test_stop_string_across_the_kept_prefix_is_cut(setup):
    tok, model, _, prompts, _ = setup
    ids = tok("ab cd", add_special_tokens=False)["input_ids"]
    (tr,) = encode_traces(model, tok, prompts[0], [ids], keep_past=False)
    cut = cut_at_stop(tr, tok, ["b c"])
    assert tok.decode(cut.ids) == "a" and len(cut.lse) == len(cut) + 1 and len(cut.states) == len(cut)
    assert cut_at_stop(tr, tok, ["zz"]) is tr


def test_sliding_window_models_refuse_a_past(setup):
    tok, model, sampler, prompts, gens = setup
    other = HFSampler(model, tok)
    other.can_continue = lambda: False  # as for a model with sliding-window layers (Gemma 3)
    with pytest.raises(ValueError, match="not supported"):
        other.continue_rows(prompts[:1], PARAMS, [1], [4], past=[gens[0].past])
