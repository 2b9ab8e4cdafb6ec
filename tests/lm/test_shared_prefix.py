"""The few-shot prefix kept once and attended apart (impetus.lm.shared_prefix): the same attention,
the same samples."""

from __future__ import annotations

import math

import numpy as np

import pytest
import torch
import torch.nn.functional as F

import impetus.lm.shared_prefix as sp_mod
from impetus.lm.hf_sampler import HFSampler
from impetus.lm.sampler import SamplingParams
from impetus.lm.shared_prefix import ATTENTION, attention, shared_prefix

from .conftest import make_tiny

SHOTS = "Q: 1+1?\nA: 2.\n\nQ: 2+2?\nA: 4.\n\nQ: 7+1?\nA: 8.\n\n"
PROMPTS = [SHOTS + "Q: 3+4?\nA:", SHOTS + "Q: 10+20?\nA:", SHOTS + "Q: 5?\nA:", SHOTS + "Q: 6+16?\nA:"]


class _Layer:
    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.keys, self.values = k, v


class _Prefix:
    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.layers = [_Layer(k, v)]


class _Module:
    layer_idx = 0
    num_key_value_groups = 3
    is_causal = True


@pytest.mark.parametrize("q", [1, 4])
def test_attention_over_a_shared_prefix_equals_attention_over_each_rows_whole_cache(q):
    """Every row attending to one stored prefix and then its own keys equals SDPA over the row's
    prefix + own keys (prefix always visible, own keys under the padding/causal mask), also for a
    row whose own keys are all masked (a left-padding position while prefilling)."""
    g = torch.Generator().manual_seed(0)
    b, kv, groups, d, p, s = 3, 2, 3, 8, 5, 6
    query = torch.randn(b, kv * groups, q, d, generator=g)
    kp, vp = torch.randn(1, kv, p, d, generator=g), torch.randn(1, kv, p, d, generator=g)
    ks, vs = torch.randn(b, kv, s, d, generator=g), torch.randn(b, kv, s, d, generator=g)
    own = torch.ones(b, 1, q, s, dtype=torch.bool)
    own[1, :, :, :2] = False  # row 1: two padding columns
    own[2, :, 0, :] = False  # row 2: its first query position sees none of its own keys
    if q > 1:
        own &= torch.ones(q, s, dtype=torch.bool).tril(diagonal=s - q)  # causal over the own keys
    with shared_prefix(_Prefix(kp, vp)):
        got, _ = attention(_Module(), query, ks, vs, own, scaling=d ** -0.5)
    keys = torch.cat([kp.expand(b, -1, -1, -1), ks], dim=2).repeat_interleave(groups, dim=1)
    values = torch.cat([vp.expand(b, -1, -1, -1), vs], dim=2).repeat_interleave(groups, dim=1)
    whole = torch.cat([torch.ones(b, 1, q, p, dtype=torch.bool), own], dim=-1)
    ref = F.scaled_dot_product_attention(query, keys, values, attn_mask=whole, scale=d ** -0.5).transpose(1, 2)
    assert got.shape == (b, q, kv * groups, d) and torch.isfinite(got).all()
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    if q > 1:  # no mask given (transformers' is_causal case): causal over the own keys
        with shared_prefix(_Prefix(kp, vp)):
            causal, _ = attention(_Module(), query, ks, vs, None, scaling=d ** -0.5)
        tri = torch.ones(q, s, dtype=torch.bool).tril(diagonal=s - q).expand(b, 1, q, s)
        whole = torch.cat([torch.ones(b, 1, q, p, dtype=torch.bool), tri], dim=-1)
        ref = F.scaled_dot_product_attention(query, keys, values, attn_mask=whole, scale=d ** -0.5).transpose(1, 2)
        torch.testing.assert_close(causal, ref, atol=1e-5, rtol=1e-5)
    # outside the context it is transformers' SDPA on the given keys only
    plain, _ = attention(_Module(), query, ks, vs, own[:1].expand(b, -1, -1, -1) | True, scaling=d ** -0.5)
    torch.testing.assert_close(plain, F.scaled_dot_product_attention(
        query, ks.repeat_interleave(groups, 1), vs.repeat_interleave(groups, 1), scale=d ** -0.5).transpose(1, 2),
        atol=1e-5, rtol=1e-5)


def test_sampling_with_the_prefix_kept_once_gives_the_same_samples(monkeypatch):
    """generate() with the shared prefix attended apart gives the tokens and recorded statistics of
    the path that copies the prefix into every row, and the apart path really runs."""
    model, tok = make_tiny(seed=3)
    model.set_attn_implementation("sdpa")
    params = SamplingParams(n=3, temperature=1.0, top_p=0.9, max_new_tokens=16, stop=["e", "\n"], seed=0,
                            batch_size=5)
    calls = []
    flash = sp_mod._flash
    monkeypatch.setattr(sp_mod, "_flash", lambda *a: calls.append(a[0].shape) or flash(*a))
    shared = HFSampler(model, tok)
    assert shared.share_prefix and model.config._attn_implementation == ATTENTION
    got = shared.generate(PROMPTS, params, [0, 1, 2, 3])
    assert calls, "the shared-prefix attention never ran"
    ref = HFSampler(model, tok, share_prefix=False).generate(PROMPTS, params, [0, 1, 2, 3])
    assert [[x.token_ids for x in r] for r in got] == [[x.token_ids for x in r] for r in ref]
    assert len({len(x.token_ids) for r in got for x in r}) > 1  # rows end apart: compaction and refills ran
    for a, b in zip((x for r in got for x in r), (x for r in ref for x in r)):
        for key in ("lse", "tok_logit", "deepconf"):
            torch.testing.assert_close(torch.as_tensor(a.record[key]), torch.as_tensor(b.record[key]),
                                       atol=1e-4, rtol=1e-4)
        assert math.isclose(a.logprob_mean, b.logprob_mean, abs_tol=1e-4)


def test_models_it_cannot_serve_keep_their_attention():
    """A sampler asked not to share, or a model not on SDPA, leaves the model's attention as it is."""
    model, tok = make_tiny(seed=4)
    model.set_attn_implementation("eager")
    assert not HFSampler(model, tok).share_prefix and model.config._attn_implementation == "eager"
    model.set_attn_implementation("sdpa")
    assert not HFSampler(model, tok, share_prefix=False).share_prefix
    assert model.config._attn_implementation == "sdpa"


def _same_rows(got, ref):
    assert [g.token_ids for g in got] == [g.token_ids for g in ref]
    for a, b in zip(got, ref):
        for key in ("lse", "tok_logit", "deepconf", "states"):
            torch.testing.assert_close(torch.as_tensor(a.record[key]), torch.as_tensor(b.record[key]),
                                       atol=1e-4, rtol=1e-4)
        assert [k.shape for k, _ in a.past] == [k.shape for k, _ in b.past]  # whole caches, prefix included
        for (ka, va), (kb, vb) in zip(a.past, b.past):
            torch.testing.assert_close(ka, kb, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(va, vb, atol=1e-5, rtol=1e-5)


def test_continued_rows_attend_to_their_shared_prefix_apart_and_keep_whole_caches(monkeypatch):
    """continue_rows (EBD's proposals, V2's regenerations) with the prompts' shared prefix attended
    apart gives the tokens, recorded values and kept caches of the path that stacks every row's whole
    cache, from given caches and without; the kept caches hold the prefix again, so a second round
    continues from them alike."""
    model, tok = make_tiny(seed=5)
    model.set_attn_implementation("sdpa")
    params = SamplingParams(n=1, temperature=1.0, top_p=1.0, max_new_tokens=10, seed=0, batch_size=3)
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    calls = []
    flash = sp_mod._flash
    monkeypatch.setattr(sp_mod, "_flash", lambda *a: calls.append(a[0].shape) or flash(*a))
    shared, plain = HFSampler(model, tok), HFSampler(model, tok, share_prefix=False)
    caps = [params.max_new_tokens] * len(prompts)
    first = shared.continue_rows(prompts, params, [1, 2, 3, 4], caps, keep_past=True)
    assert calls, "the shared-prefix attention never ran"
    _same_rows(first, plain.continue_rows(prompts, params, [1, 2, 3, 4], caps, keep_past=True))
    for rnd in range(2):  # the second round continues from the first round's kept caches
        cuts = [min(len(g.token_ids), c) for g, c in zip(first, (0, 2, 4, 6))]
        heads = [p + g.token_ids[:t] for p, g, t in zip(prompts, first, cuts)]
        caps = [params.max_new_tokens - t for t in cuts]
        calls.clear()
        got = shared.continue_rows(heads, params, [7 + rnd] * 4, caps, past=[g.past for g in first], keep_past=True)
        assert calls, "continuing rows did not attend to the shared prefix apart"
        ref = plain.continue_rows(heads, params, [7 + rnd] * 4, caps, past=[g.past for g in first], keep_past=True)
        assert len({len(g.token_ids) for g in got}) > 1  # rows end apart: compaction ran
        _same_rows(got, ref)
        prompts = heads
        first = got


def test_encoding_many_prompts_with_their_prefix_once_equals_encoding_each_prompt(monkeypatch):
    """encode_many (EBD's chain starts, V2's start answers) with the shared prefix encoded once and
    several prompts per pass gives every trace that one pass per prompt gives: recorded values,
    states (the last layer's and a middle one's), the prompt's state and whole kept caches; over
    more rows than one pass holds, and with an empty answer (Power-SMC's start)."""
    model, tok = make_tiny(seed=6)
    model.set_attn_implementation("sdpa")
    calls = []
    flash = sp_mod._flash
    monkeypatch.setattr(sp_mod, "_flash", lambda *a: calls.append(a[0].shape) or flash(*a))
    shared = HFSampler(model, tok, hidden_layers=(1,))
    plain = HFSampler(model, tok, hidden_layers=(1,), share_prefix=False)
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    g = torch.Generator().manual_seed(0)
    items = [(p, torch.randint(3, 40, (k,), generator=g).tolist()) for k in range(6) for p in prompts[: 3 + k % 2]]
    items.append((prompts[0], []))
    assert len(items) > 16  # more than one pass
    got = shared.encode_many([p for p, _ in items], [a for _, a in items], keep_past=True, temperature=0.7)
    assert calls, "the shared-prefix attention never ran"
    for (p, a), tr in zip(items, got):
        (ref,) = plain.encode_answers(p, [a], keep_past=True, temperature=0.7)
        assert list(tr.ids) == list(a)
        for key in ("lse", "tok_logit", "deepconf", "lse_temp", "states", "prompt_state"):
            torch.testing.assert_close(torch.as_tensor(getattr(tr, key)), torch.as_tensor(getattr(ref, key)),
                                       atol=1e-4, rtol=1e-4)
        for layer in (1,):
            torch.testing.assert_close(torch.as_tensor(tr.layer_states[layer]), torch.as_tensor(ref.layer_states[layer]),
                                       atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(torch.as_tensor(tr.prompt_layer_states[layer]),
                                       torch.as_tensor(ref.prompt_layer_states[layer]), atol=1e-4, rtol=1e-4)
        assert [k.shape for k, _ in tr.past] == [k.shape for k, _ in ref.past]
        for (ka, va), (kb, vb) in zip(tr.past, ref.past):
            torch.testing.assert_close(ka, kb, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(va, vb, atol=1e-5, rtol=1e-5)


def test_power_smc_particles_attend_to_the_shared_prefix_apart(monkeypatch):
    """sample_particles (Power-SMC's loop) with the prompts' shared prefix attended apart gives the
    particles, records and states of the loop that copies the prefix into every row, through
    resampling copies at every block boundary."""
    model, tok = make_tiny(seed=7)
    model.set_attn_implementation("sdpa")
    params = SamplingParams(n=4, temperature=0.7, top_p=1.0, max_new_tokens=10, stop=["\n"], seed=0, batch_size=8)
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    seeds = [[10 * i + j for j in range(4)] for i in range(len(prompts))]
    boundaries = []

    def resample(_i, views):  # halves duplicated, then a rotation
        boundaries.append(len(views))
        return [j // 2 * 2 for j in range(4)] if len(boundaries) % 2 else [(j + 1) % 4 for j in range(4)]

    calls = []
    flash = sp_mod._flash
    monkeypatch.setattr(sp_mod, "_flash", lambda *a: calls.append(a[0].shape) or flash(*a))
    got = HFSampler(model, tok).sample_particles(prompts, params, seeds, 2, resample)
    assert calls, "the shared-prefix attention never ran"
    n = len(boundaries)
    boundaries.clear()
    ref = HFSampler(model, tok, share_prefix=False).sample_particles(prompts, params, seeds, 2, resample)
    assert n >= 8 and len(boundaries) == n
    for a, b in zip((g for r in got for g in r), (g for r in ref for g in r)):
        assert a.token_ids == b.token_ids
        for key in ("lse", "tok_logit", "deepconf", "lse_temp", "states"):
            torch.testing.assert_close(torch.as_tensor(np.asarray(a.record[key], dtype=np.float32)),
                                       torch.as_tensor(np.asarray(b.record[key], dtype=np.float32)),
                                       atol=1e-4, rtol=1e-4)
