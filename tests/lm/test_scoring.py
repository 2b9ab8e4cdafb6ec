"""Teacher-forced scoring on the tiny offline Llama: batching must not change any energy."""

import numpy as np
import pytest
import torch

from impetus.energy import ENERGY_COLUMNS, FILL_VALUE, candidate_energy_row, logit_energies
from impetus.lm.scoring import completion_token_span, score_candidates
from impetus.testing import tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


PROMPTS = [
    "Q: 2+3?\nA:",
    "Q: What is 12 times 4? Think step by step.\nA:",
    "Q: 9-1?\nA:",
    "Q: 7*6?\nA:",
    "Q: long one " + "x" * 40 + "\nA:",
]
COMPLETIONS = [
    " 2+3 is 5. The answer is 5.",
    " 12*4 = 48.",
    " The answer is 8",
    " 42",
    " I am not sure what to say here at all.",
]
SPANS = [(25, 26), (8, 10), (15, 16), (1, 3), None]


def test_completion_token_span_char_tokenizer(tok):
    assert completion_token_span(tok, "The answer is 42.", (14, 16)) == (14, 16)
    assert completion_token_span(tok, "ab", (0, 2)) == (0, 2)
    assert completion_token_span(tok, "abc", None) is None
    assert completion_token_span(tok, "abc", (2, 2)) is None  # empty span
    assert completion_token_span(tok, "abc", (5, 9)) is None  # outside the text
    assert completion_token_span(tok, "", (0, 1)) is None


def _manual(model, tok, prompt, completion, span):
    """Unbatched reference: one sequence, no padding, full logits."""
    p = tok(prompt)["input_ids"]
    c = tok(completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    logits = out.logits[0, len(p) - 1 : len(p) + len(c)]
    per = logit_energies(logits, torch.tensor(c))
    tspan = completion_token_span(tok, completion, span)
    row = candidate_energy_row(per, tspan, len(c))
    h = out.hidden_states[-1][0]
    h_mean = h[len(p) : len(p) + len(c)].mean(0)
    h_ans = h[len(p) + (tspan[1] if tspan else len(c)) - 1]
    return row, h_mean.numpy(), h_ans.numpy()


def test_score_candidates_matches_unbatched(model, tok):
    res = score_candidates(model, tok, PROMPTS, COMPLETIONS, SPANS, batch_size=3)
    assert list(res.energies.columns[: len(ENERGY_COLUMNS)]) == list(ENERGY_COLUMNS)
    assert len(res.energies) == len(PROMPTS)
    assert res.hidden_mean.shape == (5, 64) and res.hidden_answer.shape == (5, 64)
    assert res.hidden_mean.dtype == np.float32
    assert res.seconds > 0
    assert res.answer_token_spans[:4] == [(25, 26), (8, 10), (15, 16), (1, 3)]
    assert list(res.energies["answer_span_found"]) == [True, True, True, True, False]
    for i, (p, c, s) in enumerate(zip(PROMPTS, COMPLETIONS, SPANS)):  # input order preserved
        row, h_mean, h_ans = _manual(model, tok, p, c, s)
        got = res.energies.iloc[i]
        for col in ENERGY_COLUMNS:
            assert got[col] == pytest.approx(row[col], abs=1e-4), (i, col)
        np.testing.assert_allclose(res.hidden_mean[i], h_mean, atol=1e-4)
        np.testing.assert_allclose(res.hidden_answer[i], h_ans, atol=1e-4)
    assert list(res.n_tokens) == [len(c) for c in COMPLETIONS]


def test_shared_prompt_cache_matches_unbatched(model, tok):
    """N candidates of one problem reuse the prompt's KV cache; ragged lengths are right-padded."""
    prompt = PROMPTS[1]
    comps = [COMPLETIONS[1], " 48", " 12 * 4 = 48. The answer is 48.", " 4"]
    spans = [(8, 10), (1, 3), (29, 31), None]
    for batch_size in (2, 8):  # 2: the group is split into two passes
        res = score_candidates(model, tok, [prompt] * 4, comps, spans, batch_size=batch_size)
        for i, (c, s) in enumerate(zip(comps, spans)):
            row, h_mean, h_ans = _manual(model, tok, prompt, c, s)
            for col in ENERGY_COLUMNS:
                assert res.energies.iloc[i][col] == pytest.approx(row[col], abs=1e-4), (batch_size, i, col)
            np.testing.assert_allclose(res.hidden_mean[i], h_mean, atol=1e-4)
            np.testing.assert_allclose(res.hidden_answer[i], h_ans, atol=1e-4)


def test_batch_size_does_not_change_energies(model, tok):
    a = score_candidates(model, tok, PROMPTS, COMPLETIONS, SPANS, batch_size=1, hidden=False)
    b = score_candidates(model, tok, PROMPTS, COMPLETIONS, SPANS, batch_size=8, hidden=False)
    assert a.hidden_mean is None and a.hidden_answer is None
    np.testing.assert_allclose(
        a.energies[list(ENERGY_COLUMNS)].to_numpy(), b.energies[list(ENERGY_COLUMNS)].to_numpy(), atol=1e-4
    )


def test_full_logits_path_without_logits_to_keep(model, tok):
    """Models without ``logits_to_keep`` get full logits; energies must be identical."""

    class NoKeep(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m, self.config = m, m.config

        def forward(self, input_ids=None, attention_mask=None, **kw):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, **kw)

    a = score_candidates(NoKeep(model), tok, PROMPTS, COMPLETIONS, SPANS, batch_size=4)
    b = score_candidates(model, tok, PROMPTS, COMPLETIONS, SPANS, batch_size=4)
    pd_a, pd_b = a.energies[list(ENERGY_COLUMNS)], b.energies[list(ENERGY_COLUMNS)]
    np.testing.assert_allclose(pd_a.to_numpy(), pd_b.to_numpy(), atol=1e-5)
    np.testing.assert_allclose(a.hidden_answer, b.hidden_answer, atol=1e-5)


def test_empty_completion_is_filled_and_flagged(model, tok):
    res = score_candidates(model, tok, ["Q: 1+1?\nA:", "Q: 1+1?\nA:"], ["", " 2"], [(0, 1), (1, 2)])
    e = res.energies
    assert list(e["empty_completion"]) == [True, False]
    assert (e.loc[0, list(ENERGY_COLUMNS)] == FILL_VALUE).all()
    assert np.isfinite(e[list(ENERGY_COLUMNS)].to_numpy()).all()
    assert e.loc[1, "answer_span_found"]
    assert np.isfinite(res.hidden_mean).all() and res.hidden_mean.shape == (2, 64)


def test_empty_input_and_length_mismatch(model, tok):
    res = score_candidates(model, tok, [], [], [])
    assert len(res.energies) == 0 and res.hidden_mean.shape == (0, 64)
    with pytest.raises(ValueError):
        score_candidates(model, tok, ["a"], [], [])
