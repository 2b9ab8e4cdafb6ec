"""Middle-layer states recorded while decoding equal a teacher-forced pass's states at that layer."""

from __future__ import annotations

import numpy as np
import torch

from impetus.energy.recorded import layer_key
from impetus.lm.hf_sampler import HFSampler
from impetus.lm.sampler import SamplingParams
from impetus.testing import tiny_llama, tiny_tokenizer

PROMPTS = ["What is 12 + 7?", "Add 3 and 4:"]


def test_recorded_layer_states_equal_teacher_forced_hidden_states():
    torch.set_num_threads(1)
    tok, model = tiny_tokenizer(), tiny_llama(layers=3)
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids("e")]
    sampler = HFSampler(model, tok, hidden_layers=(1, "mid", 3))  # mid = block 1; 3 = the last (normed) one
    assert sampler.layers == [1, 3]
    params = SamplingParams(n=6, temperature=1.3, top_p=0.95, max_new_tokens=9, stop=["z"], batch_size=5, seed=0)
    gens = sampler.generate(PROMPTS, params, [4, 5])
    checked = 0
    for i, row in enumerate(gens):
        prompt = tok(PROMPTS[i])["input_ids"]
        for g in row:
            assert set(g.record) >= {layer_key(1), layer_key(3)}
            ids = torch.tensor([prompt + list(g.token_ids)])
            with torch.no_grad():
                hs = model(input_ids=ids, output_hidden_states=True).hidden_states
            T = g.n_tokens
            for k in (1, 3):
                # The state of token t is the one computed when it is fed: position len(prompt) + t.
                ref = hs[k][0, len(prompt): len(prompt) + T].mean(dim=0) if T else hs[k][0, len(prompt) - 1]
                np.testing.assert_allclose(g.record[layer_key(k)], ref.numpy(), atol=2e-5, rtol=1e-4)
            # HF's last hidden state is the final norm's output: the recorded last-layer mean.
            np.testing.assert_allclose(g.record[layer_key(3)], g.record["hidden_mean"], atol=1e-6)
            checked += 1
    assert checked == 12
    # Block 1's states differ from the last layer's: the hook reads the layer it names.
    assert not np.allclose(gens[0][0].record[layer_key(1)], gens[0][0].record["hidden_mean"], atol=1e-3)


def test_no_layers_no_layer_keys_and_same_rows():
    tok, model = tiny_tokenizer(), tiny_llama()
    params = SamplingParams(n=3, temperature=1.0, top_p=1.0, max_new_tokens=6, stop=[], batch_size=3, seed=0)
    plain = HFSampler(model, tok).generate(PROMPTS, params, [1, 2])
    layered = HFSampler(model, tok, hidden_layers=(1,)).generate(PROMPTS, params, [1, 2])
    assert not any(k.startswith("hidden_l") for g in plain[0] for k in g.record)
    # Recording a layer changes no sampled token and no other recorded value.
    for a, b in zip(sum(plain, []), sum(layered, [])):
        assert a.token_ids == b.token_ids
        for key in ("lse", "tok_logit", "hidden_mean"):
            np.testing.assert_array_equal(a.record[key], b.record[key])


def test_traces_keep_layer_states_through_encoding_and_continuation():
    """EBD and V2 score answers from traces: a continued trace's layer-1 states, spliced after the kept
    prefix, equal a teacher-forced pass, and pool into hidden_l1 as V1 pools sampled rows."""
    from impetus.latent.evaluate import pool_fn
    from impetus.lm.trace import continued, trace_energies

    torch.set_num_threads(1)
    tok, model = tiny_tokenizer(), tiny_llama(layers=3)
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids("e")]
    sampler = HFSampler(model, tok, hidden_layers=(1,))
    prompt = tok("What is 12 + 7?")["input_ids"]
    params = SamplingParams(n=1, temperature=1.0, top_p=1.0, max_new_tokens=10, batch_size=4, seed=0)
    (first,) = sampler.continue_rows([prompt], params, [3], [10], keep_past=True)
    (start,) = sampler.encode_answers(prompt, [first.token_ids], keep_past=True)
    assert len(first.token_ids) >= 3
    np.testing.assert_allclose(start.layer_states[1], first.record["states_l1"], atol=2e-5, rtol=1e-4)
    (gen,) = sampler.continue_rows([prompt + start.ids[:2]], params, [9], [8], past=[start.past], keep_past=True)
    spliced = continued(start, 2, gen)
    ids = torch.tensor([prompt + spliced.ids])
    with torch.no_grad():
        ref = model(input_ids=ids, output_hidden_states=True).hidden_states[1][0, len(prompt):]
    np.testing.assert_allclose(spliced.layer_states[1], ref.numpy(), atol=2e-5, rtol=1e-4)
    _, hidden = trace_energies(tok, [spliced], [None])
    np.testing.assert_allclose(hidden[layer_key(1)][0], ref.mean(dim=0).numpy(), atol=2e-5, rtol=1e-4)
    # V2's gradient pooling: the layer part is the start trace's (a constant), then mean and last, as V1 orders them
    states = torch.as_tensor(spliced.states)
    pooled = pool_fn("l1_both")(states, spliced)
    expect = np.concatenate([ref.mean(dim=0).numpy(), states.mean(dim=0).numpy(), states[-1].numpy()])
    np.testing.assert_allclose(pooled.numpy(), expect, atol=2e-5, rtol=1e-4)
