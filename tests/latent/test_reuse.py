"""A V2 run's store (impetus.latent.reuse): start answers encoded once, looked up after."""

from __future__ import annotations

import numpy as np
import torch

from impetus.latent.reuse import Reuse, encode_starts
from impetus.lm.hf_sampler import HFSampler
from impetus.lm.sampler import SamplingParams
from impetus.testing import tiny_llama, tiny_tokenizer


def test_encode_starts_encodes_each_answer_once_per_store(monkeypatch):
    torch.set_num_threads(1)
    tok, model = tiny_tokenizer(), tiny_llama(seed=3)
    sampler = HFSampler(model, tok)
    prompts = [tok(f"Q: {i}+1?\nA:")["input_ids"] for i in (4, 5)]
    params = SamplingParams(n=2, temperature=1.0, top_p=1.0, max_new_tokens=6, stop=[], batch_size=8, seed=0)
    answers = [[g.token_ids for g in row] for row in sampler.generate(prompts, params, [1, 2])]
    items = [(prompts[0], answers[0][0]), (prompts[0], answers[0][1]), (prompts[1], answers[1][0])]
    calls: list[int] = []
    inner = sampler.encode_answers
    monkeypatch.setattr(sampler, "encode_answers",
                        lambda prompt, ans, **kw: calls.append(len(ans)) or inner(prompt, ans, **kw))
    reuse = Reuse()
    first = encode_starts(sampler, items[:2], reuse)
    assert calls == [2] and len(reuse.starts) == 2  # one pass for the prompt's two answers
    again = encode_starts(sampler, items, reuse)
    assert calls == [2, 1]  # only the new prompt's answer
    assert again[0] is first[0] and again[1] is first[1]
    fresh = encode_starts(sampler, items)  # no store: everything encoded
    assert calls == [2, 1, 2, 1]
    for a, b in zip(again, fresh):
        assert list(a.ids) == list(b.ids) and np.allclose(a.lse, b.lse, atol=1e-5)
