"""Scored choices (``sampling.candidates: choices``) on a tiny random Llama: the recorded values equal a
teacher-forced pass over context + choice, the shared-context batch equals each choice scored alone,
and the runner shards, checks and reuses rows with a count per problem."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from impetus.lm.executors import LocalExecutor
from impetus.lm.hf_choices import continuation_ids, resolve_layers, score_choices
from impetus.lm.hf_sampler import HFSampler
from impetus.lm.runner import IncompleteCandidatesError, check_complete, sample_problems
from impetus.lm.sampler import SamplingParams
from impetus.testing import tiny_llama, tiny_tokenizer

CONTEXT = "Question: Which is a mammal?\nAnswer:"
CHOICES = [" a whale", " a shark", " an eagle that flies"]


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(layers=3), tiny_tokenizer()


def _reference(model, tok, context: str, choice: str) -> dict[str, np.ndarray]:
    """One plain forward over context + choice (no cache, no batching): what the record must equal."""
    ctx = tok(context)["input_ids"]
    ids = continuation_ids(tok, context, ctx, choice)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ctx + ids]), output_hidden_states=True)
    logits = out.logits[0, len(ctx) - 1:].float()  # rows predicting each choice token, then the one after
    lse = torch.logsumexp(logits, dim=-1)
    tok_logit = logits[torch.arange(len(ids)), torch.tensor(ids)]
    top = torch.topk(logits[: len(ids)], 20, dim=-1).values
    states = out.hidden_states[-1][0, len(ctx):]
    return {"lse": lse.numpy(), "tok_logit": tok_logit.numpy(), "deepconf": (lse[: len(ids)] - top.mean(-1)).numpy(),
            "hidden_mean": states.mean(0).numpy(), "hidden_answer": states[-1].numpy(),
            "hidden_l1": out.hidden_states[1][0, len(ctx):].mean(0).numpy()}


def test_choice_record_equals_a_teacher_forced_pass(lm):
    model, tok = lm
    [gens] = score_choices(model, tok, [CONTEXT], [CHOICES], layers=[1])
    assert [g.sample_idx for g in gens] == [0, 1, 2] and {g.finish_reason for g in gens} == {"choice"}
    for g, choice in zip(gens, CHOICES):
        ref = _reference(model, tok, CONTEXT, choice)
        assert g.text == choice and g.n_tokens == len(choice)  # one token per character
        for key, want in ref.items():
            np.testing.assert_allclose(g.record[key], want, atol=1e-4, err_msg=key)
        assert len(g.record["lse"]) == g.n_tokens + 1 and list(g.record["char_ends"]) == list(range(1, len(choice) + 1))
        loglik = float(np.sum(ref["tok_logit"] - ref["lse"][:-1]))
        assert g.logprob_mean == pytest.approx(loglik / g.n_tokens, abs=1e-5)


def test_shared_context_equals_each_choice_scored_alone(lm):
    model, tok = lm
    [together] = score_choices(model, tok, [CONTEXT], [CHOICES], layers=[2])
    alone = [score_choices(model, tok, [CONTEXT], [[c]], layers=[2])[0][0] for c in CHOICES]
    for a, b in zip(together, alone):
        assert a.token_ids == b.token_ids
        for key in ("lse", "tok_logit", "deepconf", "hidden_mean", "hidden_answer", "hidden_l2"):
            np.testing.assert_allclose(a.record[key], b.record[key], atol=1e-5, err_msg=key)


def test_continuation_tokens_are_cut_from_the_whole_as_lm_eval_does(lm):
    _, tok = lm
    ctx = tok("Answer:")["input_ids"]
    assert continuation_ids(tok, "Answer:", ctx, " yes") == tok("Answer: yes")["input_ids"][len(ctx):]
    with pytest.raises(ValueError, match="no tokens"):
        continuation_ids(tok, "Answer:", ctx, "")


def test_layers_resolve_mid_and_refuse_out_of_range():
    assert resolve_layers(["mid", 3, 3], 30) == [3, 15]
    assert resolve_layers(["1/4", "mid", "3/4"], 30) == [8, 15, 22]  # SmolLM2-135M
    assert resolve_layers(["1/4", "mid", "3/4"], 18) == [4, 9, 14]  # Gemma-3-270M
    with pytest.raises(ValueError, match="outside 1..18"):
        resolve_layers([19], 18)


def test_runner_shards_choices_with_a_count_per_problem_and_reuses_them(lm, tmp_path):
    model, tok = lm
    problems = pd.DataFrame({"problem_id": ["p0", "p1", "p2"], "prompt": [CONTEXT, "Q: 1+1?\nA:", "Q: sky?\nA:"],
                             "choices": [CHOICES, [" 2", " 3"], [" blue", " green", " red", " grey"]]})
    params = SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=1)
    run = lambda: sample_problems(None, problems, params, tmp_path, shard_size=2, progress=False,  # noqa: E731
                                  executor=LocalExecutor(HFSampler(model, tok, hidden_layers=("mid",))))
    table, stats = run()
    assert table.groupby("problem_id").size().to_dict() == {"p0": 3, "p1": 2, "p2": 4}
    assert table["completion"].tolist() == [*CHOICES, " 2", " 3", " blue", " green", " red", " grey"]
    assert "hidden_l1" in table.columns and stats.problems_reused == 0  # mid of 3 blocks
    again, stats2 = run()
    assert stats2.problems_reused == 3
    pd.testing.assert_frame_equal(table.drop(columns="gen_seconds"), again.drop(columns="gen_seconds"))
    with pytest.raises(IncompleteCandidatesError, match="'p2'"):
        check_complete(table[table["sample_idx"] < 3], ["p0", "p1", "p2"], {"p0": 3, "p1": 2, "p2": 4})


def test_problems_batched_together_equal_each_problem_alone(lm):
    """Contexts of different lengths share a pass (left padding, one cache row per choice)."""
    model, tok = lm
    contexts = [CONTEXT, "Q: 1+1?\nA:", "Q: what colour is the clear sky at noon?\nA:"]
    conts = [CHOICES, [" 2", " 3"], [" blue", " green", " red", " grey"]]
    together = score_choices(model, tok, contexts, conts, layers=[1], batch_rows=64)
    for ctx, cs, got in zip(contexts, conts, together):
        [alone] = score_choices(model, tok, [ctx], [cs], layers=[1], batch_rows=1)
        for a, b in zip(got, alone):
            assert a.token_ids == b.token_ids
            for key in ("lse", "tok_logit", "deepconf", "hidden_mean", "hidden_answer", "hidden_l1"):
                np.testing.assert_allclose(a.record[key], b.record[key], atol=1e-5, err_msg=key)
