"""Energies recorded while decoding equal the teacher-forced ones, for every way a row can end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from impetus.energy.logit import ENERGY_COLUMNS, candidate_energy_row, per_token_from_record
from impetus.lm.hf_sampler import HFSampler
from impetus.energy.recorded import token_span
from impetus.lm.sampler import SamplingParams
from impetus.lm.scoring import score_candidates
from impetus.testing import tiny_llama, tiny_tokenizer

PROMPTS = ["What is 12 + 7?", "Add 3 and 4:", "x"]


def _span(_prompt_idx: int, text: str) -> tuple[int, int] | None:
    return (1, min(3, len(text))) if len(text) > 1 else None  # any rule will do; both sides share it


def recorded_energies(gen) -> dict[str, float]:
    rec = gen.record
    per_tok = per_token_from_record(torch.tensor(rec["lse"]), torch.tensor(rec["tok_logit"]), torch.tensor(rec["deepconf"]))
    span = token_span(list(rec["char_ends"]), _span(0, gen.text))
    return candidate_energy_row(per_tok, span, gen.n_tokens)


@pytest.fixture(scope="module")
def generations():
    torch.set_num_threads(1)
    tok, model = tiny_tokenizer(), tiny_llama()
    # Two frequent characters count as EOS and two as stop strings, so rows end every way.
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids("e"), tok.convert_tokens_to_ids("t")]
    sampler = HFSampler(model, tok)
    params = SamplingParams(n=12, temperature=1.3, top_p=0.95, max_new_tokens=10, stop=["z", "k"], batch_size=7, seed=0)
    gens = sampler.generate(PROMPTS, params, [1, 2, 3], answer_span=_span)
    return tok, model, gens


def test_rows_end_by_eos_stop_and_length(generations):
    _, _, gens = generations
    reasons = {g.finish_reason for row in gens for g in row}
    assert reasons == {"eos", "stop", "length"}


def test_recorded_energies_equal_teacher_forced(generations):
    tok, model, gens = generations
    flat = [(i, g) for i, row in enumerate(gens) for g in row]
    ref = score_candidates(
        model, tok, prompts=[PROMPTS[i] for i, _ in flat], completions=[g.text for _, g in flat],
        answer_spans=[_span(i, g.text) for i, g in flat], batch_size=5, hidden=True,
    )
    # Teacher forcing re-tokenises the text; the random model sometimes samples special tokens
    # (e.g. "</s>") whose text re-tokenises differently, and only rows that round-trip compare.
    same = [tok(g.text, add_special_tokens=False)["input_ids"] == g.token_ids for _, g in flat]
    assert sum(same) >= 0.8 * len(flat)
    assert {g.finish_reason for (_, g), ok in zip(flat, same) if ok} == {"eos", "stop", "length"}
    for k, (_, g) in enumerate(flat):
        if not same[k]:
            continue
        got = recorded_energies(g)
        for col in ENERGY_COLUMNS:
            assert got[col] == pytest.approx(ref.energies.loc[k, col], abs=1e-3), (g.finish_reason, col)
        assert got["answer_span_found"] == ref.energies.loc[k, "answer_span_found"]
        np.testing.assert_allclose(g.record["hidden_mean"], ref.hidden_mean[k], atol=1e-4)
        np.testing.assert_allclose(g.record["hidden_answer"], ref.hidden_answer[k], atol=1e-4)
        assert len(g.record["lse"]) == g.n_tokens + 1


def test_waves_are_prefixes_of_one_call(generations):
    tok, model, gens = generations
    sampler = HFSampler(model, tok)
    params = SamplingParams(n=4, temperature=1.3, top_p=0.95, max_new_tokens=10, stop=["z", "k"], batch_size=3, seed=0)
    wave = sampler.generate(PROMPTS, params, [1, 2, 3], first_sample=4, answer_span=_span)
    for full, part in zip(gens, wave):
        assert [g.sample_idx for g in part] == [4, 5, 6, 7]
        assert [g.text for g in part] == [g.text for g in full[4:8]]
        np.testing.assert_allclose(part[0].record["lse"], full[4].record["lse"], atol=1e-5)


def test_recording_off_changes_no_text(generations):
    tok, model, gens = generations
    params = SamplingParams(n=12, temperature=1.3, top_p=0.95, max_new_tokens=10, stop=["z", "k"], batch_size=7, seed=0)
    plain = HFSampler(model, tok, record=False).generate(PROMPTS, params, [1, 2, 3])
    assert [[g.text for g in r] for r in plain] == [[g.text for g in r] for r in gens]
    assert all(g.record is None for r in plain for g in r)


def test_energies_stage_core_from_a_recorded_table_matches_teacher_forced(generations):
    import pandas as pd

    from impetus.energy.recorded import RECORD_KEYS, recorded_energies
    from impetus.lm.scoring import score_table

    tok, model, gens = generations
    rows = []
    for i, row in enumerate(gens):
        for g in row:
            if tok(g.text, add_special_tokens=False)["input_ids"] != g.token_ids:
                continue
            span = _span(i, g.text)
            rows.append({"problem_id": f"p{i}", "sample_idx": g.sample_idx, "completion": g.text, "n_tokens": g.n_tokens,
                         "answer_start": span[0] if span else None, "answer_end": span[1] if span else None,
                         **{col: g.record[key] for col, key in RECORD_KEYS.items()}})
    # Most rows re-tokenize to their own ids; an empty table would make the comparison vacuous.
    assert len(rows) >= sum(len(r) for r in gens) // 2, f"only {len(rows)} comparable rows"
    graded = pd.DataFrame(rows).astype({"answer_start": "Int64", "answer_end": "Int64"})
    prompts = pd.DataFrame({"problem_id": [f"p{i}" for i in range(len(PROMPTS))], "prompt": PROMPTS})
    got, hidden = recorded_energies(graded)
    ref, ref_hidden, _ = score_table(model, tok, graded, prompts, batch_size=8, hidden=True, progress=False)
    pd.testing.assert_frame_equal(got, ref, atol=1e-3, check_exact=False)
    np.testing.assert_allclose(hidden["hidden_answer"], ref_hidden["hidden_answer"], atol=1e-4)


def test_sampling_statistics_equal_the_reference_step_stats():
    from impetus.lm.hf_sampler import _sample_tokens
    from impetus.lm.recording import step_stats

    logits = torch.randn(5, 300) * 3
    rows = [type("R", (), {"gen": torch.Generator().manual_seed(i)})() for i in range(5)]
    for temperature, top_p in ((0.0, 1.0), (0.8, 1.0), (0.8, 0.9), (0.5, 1.0)):
        tok, lp, stats = _sample_tokens(logits, rows, temperature, top_p, record=True)
        torch.testing.assert_close(stats, step_stats(logits, tok, temperature=temperature))
        # the tempered normaliser: log sum_v p(v)^(1/T) = lse(f/T) - lse(f)/T, checked by brute force
        if temperature:
            log_z = torch.log((torch.softmax(logits, -1) ** (1 / temperature)).sum(-1))
            torch.testing.assert_close(stats[:, 3] - stats[:, 0] / temperature, log_z, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(lp, torch.log_softmax(logits, -1).gather(1, tok[:, None])[:, 0])


@pytest.mark.integration
def test_smollm2_recorded_energies_equal_teacher_forced():
    """The real SmolLM2-135M, few-shot arithmetic, rows ending by EOS, a stop string and the cap."""
    import pandas as pd

    from impetus.benchmarks import get_benchmark
    from impetus.energy.recorded import RECORD_KEYS, recorded_energies
    from impetus.lm.loading import load_model, resolve_model
    from impetus.lm.scoring import score_table

    model, tok = load_model(resolve_model("smollm2-135m-instruct"))
    bench = get_benchmark("arith", n_problems=20, seed=0)
    shots = "Q: What is 23 + 45?\nA: 23 + 45 = 68. The answer is 68.\n\n" * 3
    chat = tok.apply_chat_template([{"role": "user", "content": "Say hi."}], tokenize=False, add_generation_prompt=True)
    prompts = [shots + "Q: What is 12 + 30?\nA:", shots + "Q: What is 51 + 17?\nA:", "Write a long story:", chat]
    spans = lambda _i, text: (lambda f: (f[1], f[2]) if f else None)(bench.extract_span(text))  # noqa: E731
    params = SamplingParams(n=6, temperature=1.0, top_p=0.95, max_new_tokens=40, stop=["\n"], batch_size=8, seed=0)
    gens = HFSampler(model, tok).generate(prompts, params, [0, 1, 2, 3], answer_span=spans)
    rows = []
    for i, row in enumerate(gens):
        for g in row:
            span = spans(i, g.text)
            rows.append({"problem_id": f"p{i}", "sample_idx": g.sample_idx, "completion": g.text, "n_tokens": g.n_tokens,
                         "finish_reason": g.finish_reason,
                         "answer_start": span[0] if span else None, "answer_end": span[1] if span else None,
                         **{col: g.record[key] for col, key in RECORD_KEYS.items()}})
    graded = pd.DataFrame(rows).astype({"answer_start": "Int64", "answer_end": "Int64"})
    # Rows whose text re-tokenises to other ids (rare BPE merges) cannot be compared token by token.
    same = [tok(t, add_special_tokens=False)["input_ids"] == g.token_ids
            for t, g in zip(graded["completion"], (g for row in gens for g in row))]
    graded = graded[same].reset_index(drop=True)
    assert set(graded["finish_reason"]) == {"stop", "length", "eos"} and len(graded) >= 16
    table = pd.DataFrame({"problem_id": [f"p{i}" for i in range(4)], "prompt": prompts})
    got, hidden = recorded_energies(graded)
    ref, ref_hidden, _ = score_table(model, tok, graded, table, batch_size=8, hidden=True, progress=False)
    pd.testing.assert_frame_equal(got, ref, atol=1e-3, check_exact=False)
    np.testing.assert_allclose(hidden["hidden_mean"], ref_hidden["hidden_mean"], atol=1e-3)
