"""HFSampler: equivalence with model.generate, determinism, stop strings, EOS, batching invariance."""

from __future__ import annotations

import math

import pytest
import torch

from impetus.lm.hf_sampler import HFSampler
from impetus.lm.sampler import Generation, SamplingParams, get_sampler, row_seed

PROMPTS = ["Hello", "Q: 2+3?\nA:", "a much longer prompt about many things", "xy"]


def sp(**kw) -> SamplingParams:
    """SamplingParams with explicit test values for the required fields (any can be overridden)."""
    return SamplingParams(**{"n": 1, "temperature": 0.8, "top_p": 1.0, "max_new_tokens": 128, **kw})


def _generate_ref(model, tok, prompts: list[str], max_new: int) -> list[list[int]]:
    """Greedy continuations from model.generate on one left-padded batch, EOS and after removed."""
    enc = tok(prompts, return_tensors="pt", padding=True)
    out = model.generate(**enc, do_sample=False, max_new_tokens=max_new, pad_token_id=tok.pad_token_id)
    res = []
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        res.append(row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row)
    return res


def test_greedy_matches_generate_single(tiny):
    model, tok = tiny
    s = get_sampler("hf", model, tok)
    got = s.generate(["Hello"], sp(n=1, temperature=0, max_new_tokens=24), [0])[0][0]
    ref = _generate_ref(model, tok, ["Hello"], 24)[0]
    assert got.token_ids == ref
    assert len(set(ref)) > 3  # the tiny model produces varied text, so the check is not vacuous
    assert got.finish_reason == "length" and got.n_tokens == 24


def test_greedy_matches_generate_padded_batch(tiny):
    model, tok = tiny
    s = get_sampler("hf", model, tok)
    got = s.generate(PROMPTS, sp(n=2, temperature=0, max_new_tokens=20, batch_size=8), [0, 1, 2, 3])
    batch_ref = _generate_ref(model, tok, PROMPTS, 20)
    for i, p in enumerate(PROMPTS):
        single_ref = _generate_ref(model, tok, [p], 20)[0]
        assert got[i][0].token_ids == batch_ref[i] == single_ref
        assert got[i][1].token_ids == got[i][0].token_ids  # greedy: all n copies agree


def test_batch_size_does_not_change_results(tiny):
    """Dropping/refilling rows (batch_size 3 forces refills; 1 = no sharing) changes nothing."""
    model, tok = tiny
    s = get_sampler("hf", model, tok)
    for temp in (0.0, 1.0):
        base = dict(n=3, temperature=temp, top_p=0.9, max_new_tokens=16, stop=["e", "\n"])
        ref = s.generate(PROMPTS, sp(**base, batch_size=1), [5, 6, 7, 8])
        for bs in (3, 8, 64):
            got = s.generate(PROMPTS, sp(**base, batch_size=bs), [5, 6, 7, 8])
            for a, b in zip(ref, got):
                assert [g.token_ids for g in a] == [g.token_ids for g in b]
                assert [g.text for g in a] == [g.text for g in b]
                for x, y in zip(a, b):
                    assert x.logprob_mean == pytest.approx(y.logprob_mean, abs=1e-4, nan_ok=True)


def test_determinism_and_seed_sensitivity(tiny):
    model, tok = tiny
    s = get_sampler("hf", model, tok)
    p = sp(n=4, temperature=1.0, top_p=0.95, max_new_tokens=12, batch_size=8)
    a = s.generate(PROMPTS[:2], p, [1, 2])
    b = s.generate(PROMPTS[:2], p, [1, 2])
    c = s.generate(PROMPTS[:2], p, [3, 4])
    texts = lambda r: [[g.text for g in row] for row in r]  # noqa: E731
    assert texts(a) == texts(b)
    assert texts(a) != texts(c)
    assert len(set(texts(a)[0])) > 1  # the n samples of one prompt differ from each other
    # a prompt's samples do not depend on the other prompts in the call
    alone = s.generate(PROMPTS[1:2], p, [2])
    assert texts(alone)[0] == texts(a)[1]


def test_tiny_top_p_is_greedy(tiny):
    """A nucleus of (almost) zero mass keeps only the top token, whatever the temperature."""
    model, tok = tiny
    s = get_sampler("hf", model, tok)
    greedy = s.generate(PROMPTS, sp(temperature=0, max_new_tokens=10), [0] * 4)
    nucleus = s.generate(PROMPTS, sp(temperature=2.0, top_p=1e-6, max_new_tokens=10), [9] * 4)
    assert [r[0].token_ids for r in greedy] == [r[0].token_ids for r in nucleus]


def test_stop_string_cut_and_finish_reason(tiny):
    model, tok = tiny
    s = get_sampler("hf", model, tok)
    full = s.generate(["Hello"], sp(temperature=0, max_new_tokens=30), [0])[0][0]
    stop = full.text[6:8]  # a 2-character stop string that spans two (char-level) tokens
    cut = full.text.find(stop)
    got = s.generate(["Hello"], sp(temperature=0, max_new_tokens=30, stop=[stop]), [0])[0][0]
    assert got.finish_reason == "stop"
    assert got.text == full.text[:cut]
    assert got.token_ids == full.token_ids[:cut] and got.n_tokens == cut
    # mean log-prob over the kept tokens only
    assert got.logprob_mean == pytest.approx(_teacher_forced_mean(model, tok, "Hello", got.token_ids), abs=1e-4)


def _teacher_forced_mean(model, tok, prompt: str, completion: list[int]) -> float:
    ids = tok(prompt)["input_ids"] + completion
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    start = len(ids) - len(completion)
    return float(sum(logp[start - 1 + k, t] for k, t in enumerate(completion)) / len(completion))


def test_logprob_is_untempered_model_logprob(tiny):
    model, tok = tiny
    s = get_sampler("hf", model, tok)
    g = s.generate(["Hi"], sp(temperature=1.7, top_p=0.8, max_new_tokens=10), [3])[0][0]
    assert g.logprob_mean == pytest.approx(_teacher_forced_mean(model, tok, "Hi", g.token_ids), abs=1e-4)
    assert g.seconds > 0


def test_eos_finishes_row(tiny):
    model, tok = tiny
    s = HFSampler(model, tok)
    full = s.generate(["Hello"], sp(temperature=0, max_new_tokens=20), [0])[0][0]
    s.eos_ids = {full.token_ids[4]}  # pretend the 5th generated token is EOS
    first = full.token_ids.index(full.token_ids[4])
    got = s.generate(["Hello"], sp(temperature=0, max_new_tokens=20), [0])[0][0]
    assert got.finish_reason == "eos"
    assert got.token_ids == full.token_ids[:first]
    assert got.text == tok.decode(full.token_ids[:first])


def test_stop_at_first_token_gives_empty_completion(tiny):
    model, tok = tiny
    s = get_sampler("hf", model, tok)
    full = s.generate(["Hello"], sp(temperature=0, max_new_tokens=5), [0])[0][0]
    got = s.generate(["Hello"], sp(temperature=0, max_new_tokens=5, stop=[full.text[0]]), [0])[0][0]
    assert (got.text, got.n_tokens, got.finish_reason) == ("", 0, "stop")
    assert math.isnan(got.logprob_mean)


def test_params_validation_and_registry(tiny):
    for bad in (dict(n=0), dict(top_p=0.0), dict(top_p=1.5), dict(temperature=-1), dict(max_new_tokens=0),
                dict(batch_size=0), dict(stop=[""])):
        with pytest.raises(ValueError):
            sp(**bad)
    assert sp(stop="\n").stop == ["\n"]
    assert sp(batch_size=4).digest() == sp(batch_size=64).digest()
    assert sp(seed=1).digest() != sp(seed=2).digest()
    with pytest.raises(KeyError, match=r"Unknown sampler backend 'nope'. Known: \[.*'hf'.*\]"):
        get_sampler("nope", *tiny)
    assert row_seed(1, 0) == row_seed(1, 0) != row_seed(1, 1)
    s = get_sampler("hf", *tiny)
    assert s.generate([], sp(), []) == []
    with pytest.raises(ValueError, match="seeds"):
        s.generate(["a"], sp(), [])
    out = s.generate(["a"], sp(n=2, max_new_tokens=3), [0])
    assert isinstance(out[0][0], Generation) and len(out[0]) == 2


def test_shared_prefix_prefill_matches_generate(tiny):
    """Few-shot prompts share a prefix that is prefilled once; outputs must not change."""
    model, tok = tiny
    shots = "Q: 1+1?\nA: 2.\n\nQ: 2+2?\nA: 4.\n\n"
    prompts = [shots + "Q: 3+4?\nA:", shots + "Q: 10+20?\nA:", shots + "Q: 5?\nA:"]
    greedy = sp(n=2, temperature=0, max_new_tokens=16, batch_size=4)
    got = HFSampler(model, tok).generate(prompts, greedy, [0, 1, 2])
    for i, p in enumerate(prompts):
        assert got[i][0].token_ids == _generate_ref(model, tok, [p], 16)[0]
    sampled = sp(n=3, temperature=1.0, top_p=0.9, max_new_tokens=16, batch_size=5)
    shared = HFSampler(model, tok).generate(prompts, sampled, [0, 1, 2])
    unshared = HFSampler(model, tok, min_shared_prefix=10**9).generate(prompts, sampled, [0, 1, 2])
    assert [[g.token_ids for g in r] for r in shared] == [[g.token_ids for g in r] for r in unshared]


def test_cache_growth_and_lazy_compaction_change_nothing(tiny, monkeypatch):
    """In-place KV growth (forced to regrow often) and lazy dropping of finished rows (compacting
    at every step vs only on refills) give the same tokens as model.generate / as each other."""
    import impetus.lm.kv_cache as hs

    model, tok = tiny
    monkeypatch.setattr(hs, "_SPARE_MIN", 1)  # buffers fill up and regrow every few steps
    greedy = sp(n=2, temperature=0, max_new_tokens=40, batch_size=3)
    got = HFSampler(model, tok).generate(PROMPTS, greedy, [0, 1, 2, 3])
    for i, p in enumerate(PROMPTS):
        assert got[i][0].token_ids == got[i][1].token_ids == _generate_ref(model, tok, [p], 40)[0]
    sampled = sp(n=3, temperature=1.0, top_p=0.9, max_new_tokens=24, stop=["e", "\n"], batch_size=5)
    runs = [
        HFSampler(model, tok, compact_fraction=f).generate(PROMPTS, sampled, [5, 6, 7, 8])
        for f in (0.0, 0.5, 1.0)
    ]
    monkeypatch.setattr(hs, "_SPARE_MIN", 64)
    runs.append(HFSampler(model, tok, compact_fraction=1.0).generate(PROMPTS, sampled, [5, 6, 7, 8]))
    ref = [[g.token_ids for g in r] for r in runs[0]]
    assert len({len(g.token_ids) for r in runs[0] for g in r}) > 1  # rows finish at different steps
    for run in runs[1:]:
        assert [[g.token_ids for g in r] for r in run] == ref


def test_params_fields_configured_in_yaml_are_required():
    """n, temperature, top_p, max_new_tokens have defaults only in parameters_sampling.yml."""
    for missing in ("n", "temperature", "top_p", "max_new_tokens"):
        kw = {"n": 2, "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 8}
        kw.pop(missing)
        with pytest.raises(TypeError, match=missing):
            SamplingParams(**kw)
    with pytest.raises(TypeError):
        SamplingParams(2, 0.8, 0.95, 8)  # keyword-only: no silent positional mix-ups


def test_remaining_param_defaults_agree_with_yaml():
    import dataclasses
    from pathlib import Path

    import yaml

    conf = Path(__file__).resolve().parents[2] / "conf" / "base" / "parameters_sampling.yml"
    yml = yaml.safe_load(conf.read_text())["sampling"]
    defaults = {f.name: f.default for f in dataclasses.fields(SamplingParams)
                if f.default is not dataclasses.MISSING}
    assert defaults == {"batch_size": yml["batch_size"], "seed": yml["seed"]}
    # stop: YAML null means "the benchmark's stop strings", resolved by the caller; the neutral
    # dataclass default is no stop strings at all.
    assert yml["stop"] is None and sp().stop == []


def test_registry_is_lazy_and_extensible(tiny, monkeypatch):
    import subprocess
    import sys

    from impetus.lm import sampler as sampler_mod

    # Importing the interface never imports a backend (and the backend never imports a registry).
    code = "import sys, impetus.lm.sampler as s; print('impetus.lm.hf_sampler' in sys.modules, s.known_samplers())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False ['hf']"
    assert "register_sampler" not in vars(__import__("impetus.lm.hf_sampler", fromlist=["x"]))

    monkeypatch.setattr(sampler_mod, "_REGISTRY", dict(sampler_mod._REGISTRY))
    made = []

    @sampler_mod.register_sampler("mine")
    def make(model, tok, **kw):
        made.append(kw)
        return HFSampler(model, tok, **kw)

    assert isinstance(get_sampler("mine", *tiny, refill_fraction=0.5), HFSampler) and made == [{"refill_fraction": 0.5}]
    sampler_mod.register_sampler("by_path", "impetus.lm.hf_sampler:HFSampler")
    assert type(get_sampler("by_path", *tiny)) is HFSampler
    assert sampler_mod.known_samplers() == ["by_path", "hf", "mine"]
    with pytest.raises(ValueError, match="package.module:attribute"):
        sampler_mod.register_sampler("bad", "no_colon_here")
    with pytest.raises(KeyError, match=r"Known: \['by_path', 'hf', 'mine'\]"):
        get_sampler("vllm", *tiny)
