"""V2's ceiling (issue 27): the enumerated single-token edits equal a brute-force search on the
tiny model, and the summary's headroom and argmin are what their definitions say."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from impetus.latent.ceiling import (answer_token, ceiling_table, edit_positions, enumerate_edits,
                                    summarize_ceiling)
from impetus.latent.optimize import LatentConfig, LatentOptimizer, _Job, trace_states
from impetus.latent.reuse import encode_starts
from impetus.lm.hf_sampler import HFSampler
from impetus.lm.sampler import SamplingParams
from impetus.testing import tiny_llama, tiny_tokenizer

PARAMS = SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=8, stop=[], batch_size=16, seed=0)
CFG = LatentConfig(mode="reinforce", positions="spilled", prefix_fraction=0.2, window=2, steps=0, lr=0.5, samples=2,
                   radius=0.5, patience=None)


@pytest.fixture(scope="module")
def setup():
    tok, model = tiny_tokenizer(), tiny_llama(seed=2)
    with torch.no_grad():  # sharper, so greedy continuations differ between forced tokens
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    sampler = HFSampler(model, tok)
    prompts = [tok(f"Q: {i}+{i}?\nA:")["input_ids"] for i in (2, 3)]
    sampled = SamplingParams(n=1, temperature=1.0, top_p=1.0, max_new_tokens=8, stop=[], batch_size=8, seed=0)
    answers = [g[0].token_ids for g in sampler.generate(prompts, sampled, [5, 6])]
    return tok, sampler, prompts, answers


def test_edits_equal_brute_force_greedy_decoding(setup):
    tok, sampler, prompts, answers = setup
    opt = LatentOptimizer(sampler, tok, PARAMS, CFG)
    starts = encode_starts(sampler, list(zip(prompts, answers)))
    positions = [[(0, "window"), (2, "answer")], [(1, "window")]]
    edits, traces = enumerate_edits(opt, starts, prompts, positions, k=4)
    assert len(edits) == 4 * 3 and [e.rank for e in edits[:4]] == [0, 1, 2, 3]
    for e, tr in zip(edits, traces):
        ids = answers[e.owner]
        logits = sampler.state_logits(trace_states(starts[e.owner]))[e.q]
        assert e.token == int(torch.topk(logits.float(), 4).indices[e.rank])  # the model's rank-th token there
        prefix = prompts[e.owner] + ids[: e.q] + [e.token]
        greedy = sampler.generate([prefix], SamplingParams(**{**PARAMS.to_dict(), "max_new_tokens": 8 - e.q - 1}),
                                  [0])[0][0] if 8 - e.q - 1 > 0 else None
        want = ids[: e.q] + [e.token] + (greedy.token_ids if greedy is not None else [])
        assert list(tr.ids) == want
    # different forced tokens lead to different answers somewhere: the check above is not vacuous
    assert len({tuple(t.ids) for t in traces}) > len(positions)


def test_edits_v2_already_made_are_looked_up(setup, counting_rows, monkeypatch):
    """The ceiling shares V2's store: the start answers V2 encoded are not encoded again, an edit V2
    already made (the same forced token after the same kept tokens) is not generated again, and the
    edits equal a fresh enumeration."""
    tok, sampler, prompts, answers = setup
    items = list(zip(prompts, answers))
    positions = [[(0, "window"), (2, "answer")], [(1, "window")]]
    _, alone = enumerate_edits(LatentOptimizer(sampler, tok, PARAMS, CFG), encode_starts(sampler, items), prompts,
                               positions, k=4)
    v2 = LatentOptimizer(sampler, tok, PARAMS, CFG)
    starts = v2.encode(items)
    v2.regenerate([_Job(prompt=list(prompts[0]), start=starts[0], seed=0, p=2)],
                  [[int(torch.topk(sampler.state_logits(trace_states(starts[0]))[2].float(), 4).indices[1])]])
    rows, encoded = counting_rows(sampler), []
    inner = sampler.encode_answers
    monkeypatch.setattr(sampler, "encode_answers", lambda prompt, answers, **kw: encoded.append(len(answers))
                        or inner(prompt, answers, **kw))
    shared = LatentOptimizer(sampler, tok, PARAMS, CFG, v2.reuse)
    again = shared.encode(items)
    _, traces = enumerate_edits(shared, again, prompts, positions, k=4)
    assert encoded == [] and all(a is b for a, b in zip(again, starts))
    assert rows == [4 * 3 - 1] and [t.ids for t in traces] == [t.ids for t in alone]


def test_summary_headroom_and_argmin():
    base = pd.DataFrame({"start_energy": [0.5, 0.2, 0.9], "control_energy": [0.4, 0.3, 0.9],
                         "start_correct": [False, True, False], "control_correct": [False, True, False]})
    alts = pd.DataFrame({"owner": [0, 0, 1, 2], "kind": ["window", "answer", "window", "window"],
                         "energy": [0.1, 0.7, 0.1, 1.5], "correct": [True, True, False, True]})
    s = summarize_ceiling(alts, base, n_boot=200, seed=0)
    assert s["control_wrong"] == 2 and s["oracle_headroom"] == 1.0  # answers 0 and 2 each have a right alternative
    assert s["oracle_headroom_by_kind"] == {"answer": 0.5, "window": 1.0}
    # argmin: answer 0 -> alt 0.1 (right), answer 1 -> alt 0.1 < start 0.2 (wrong), answer 2 -> start/control 0.9 (wrong)
    assert s["argmin_accuracy"] == pytest.approx(1 / 3) and s["argmin_minus_control"] == pytest.approx(0.0)
    assert s["control_accuracy"] == pytest.approx(1 / 3)


def test_positions_and_answer_token(setup):
    tok = setup[0]
    assert edit_positions((3, 2), 4, 10) == [(3, "window"), (4, "window")]
    assert edit_positions((3, 2), 7, 10) == [(3, "window"), (4, "window"), (7, "answer")]
    assert edit_positions((9, 2), None, 10) == [(9, "window")]
    ids = tok(" 12 + 3 = 15", add_special_tokens=False)["input_ids"]
    text = tok.decode(ids)
    q = answer_token(tok, ids, text.index("15"))
    assert tok.decode(ids[:q]) == text[: len(tok.decode(ids[:q]))] and "15" in tok.decode(ids[q:])
    assert "15" not in tok.decode(ids[:q]) and answer_token(tok, ids, None) is None
    assert ceiling_table([], [], np.zeros(0), []).empty
