"""``model.dtype``: auto's choice, the mixed-precision model, and what bf16 does to the recorded statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from impetus.energy.logit import ENERGY_COLUMNS
from impetus.lm import precision
from impetus.lm.hf_sampler import HFSampler
from impetus.lm.loading import load_model
from impetus.lm.sampler import SamplingParams
from impetus.lm.scoring import score_candidates
from impetus.pipelines.base_model.nodes import prepare_base_model
from impetus.pipelines.sampling.nodes import _model_key
from impetus.framework.config import ModelParams

from .conftest import make_tiny
from .test_recording import _span, recorded_energies

PROMPTS = ["What is 12 + 7?", "Add 3 and 4:"]


@pytest.mark.parametrize("amx, avx, want", [(True, False, "bfloat16"), (False, True, "bfloat16"),
                                            (False, False, "float32")])
def test_auto_follows_torchs_cpu_detection(monkeypatch, amx, avx, want):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx)
    dtype, reason = precision.choose_dtype("auto", "cpu")
    assert dtype == want and reason.startswith("auto: torch reports")
    assert ("AMX," in reason or reason.endswith("AMX on this CPU")) == amx
    assert precision.choose_dtype("float32", "cpu") == ("float32", "set by model.dtype")
    assert precision.choose_dtype("auto", "mps")[0] == "float32"


def test_a_half_dtype_on_a_cpu_without_a_fast_path_warns_once_naming_its_setting(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_bf16_fast_path", lambda: (False, "neither AMX nor AVX512-BF16"))
    monkeypatch.setattr(precision, "_WARNED", set())
    with caplog.at_level("WARNING", logger=precision.__name__):
        for _ in range(3):
            assert precision.choose_dtype("bfloat16", "cpu", "scorer.text_ebm.score_dtype") == (
                "bfloat16", "set by scorer.text_ebm.score_dtype")
        precision.choose_dtype("bfloat16", "cpu")
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and warned[0].startswith("scorer.text_ebm.score_dtype=bfloat16 on a CPU without")
    assert warned[1].startswith("model.dtype=bfloat16")


@pytest.mark.parametrize("bf16, want", [(True, "bfloat16"), (False, "float32")])
def test_auto_on_cuda_asks_the_device(monkeypatch, bf16, want):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "H100")
    assert precision.choose_dtype("auto", "cuda:0")[0] == want


def test_mixed_model_keeps_norm_head_and_rotary_in_fp32():
    model, _ = make_tiny()
    ref = model.lm_head.weight.detach().clone()
    precision.to_mixed_precision(model, "bfloat16")
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.model.layers.parameters())
    assert model.model.norm.weight.dtype == torch.float32 and model.lm_head.weight.dtype == torch.float32
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    # the tied head was untied with its fp32 values, not a bf16 round trip
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, ref)
    out = model(torch.tensor([[3, 4, 5, 6]]), output_hidden_states=True)
    assert out.logits.dtype == torch.float32 and out.hidden_states[-1].dtype == torch.float32


def test_load_model_in_bf16_is_the_mixed_model(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    m2, _ = load_model(tmp_path / "m", dtype="bfloat16")
    assert m2.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert m2.lm_head.weight.dtype == torch.float32
    m3, _ = load_model(tmp_path / "m", dtype="float32")
    assert all(p.dtype == torch.float32 for p in m3.parameters())


def _sample(model, tok, seed=0):
    params = SamplingParams(n=6, temperature=1.0, top_p=0.95, max_new_tokens=12, stop=[], batch_size=6, seed=seed)
    return HFSampler(model, tok).generate(PROMPTS, params, [0, 1])


def test_bf16_recorded_energies_stay_close_to_fp32_teacher_forced():
    """The same completions: energies and states recorded by the bf16 model against an fp32
    teacher-forced pass. The random tiny model's large weights make its blocks round more than a
    trained model's (measured: every energy r >= 0.991 here); sampling twice gives the same tokens."""
    torch.set_num_threads(1)
    fp32, tok = make_tiny()
    half, _ = make_tiny()
    precision.to_mixed_precision(half, "bfloat16")
    gens = _sample(half, tok)
    assert [[g.token_ids for g in r] for r in gens] == [[g.token_ids for g in r] for r in _sample(half, tok)]
    flat = [(i, g) for i, row in enumerate(gens) for g in row
            if tok(g.text, add_special_tokens=False)["input_ids"] == g.token_ids]
    assert len(flat) >= 6
    ref = score_candidates(fp32, tok, prompts=[PROMPTS[i] for i, _ in flat], completions=[g.text for _, g in flat],
                           answer_spans=[_span(i, g.text) for i, g in flat], batch_size=4, hidden=True)
    got = pd.DataFrame([recorded_energies(g) for _, g in flat])
    for col in ENERGY_COLUMNS:
        err = (got[col] - ref.energies[col]).abs().max()
        r = np.corrcoef(got[col], ref.energies[col])[0, 1]
        assert err > 0 and r >= 0.98, (col, err, r)  # no error at all would mean it never ran in bf16
    states = np.stack([g.record["hidden_mean"] for _, g in flat])
    assert np.abs(states - ref.hidden_mean).max() < 0.05 * np.abs(ref.hidden_mean).max()


def _base_model(tiny, folder, **params) -> dict:
    """``prepare_base_model``'s record of the tiny model saved to ``folder``, with ``params`` set."""
    model, tok = tiny
    if not folder.exists():
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
    fixed = dict(name_or_path=str(folder), cache_dir=None, trust_remote_code=False, allow_pickle=False,
                 device="cpu", hidden_layers=[])
    return prepare_base_model(ModelParams(**fixed, **params))[0]


def test_base_model_record_runs_in_the_chosen_dtype(tiny, tmp_path):
    fp32 = _base_model(tiny, tmp_path / "m", dtype="float32", fp32_matmul="default")
    bf16 = _base_model(tiny, tmp_path / "m", dtype="bfloat16", fp32_matmul="default")
    # the cached folder's fp32 weights used to overwrite the configured dtype in the record
    assert (fp32["dtype"], bf16["dtype"], bf16["weights_dtype"]) == ("float32", "bfloat16", "float32")
    assert _model_key(fp32) == str(tmp_path / "m") and _model_key(bf16) != _model_key(fp32)


def test_base_model_record_carries_onednn_kernels_only_when_chosen(tiny, tmp_path):
    """``model.fp32_matmul``: the record names oneDNN only where it was chosen (elsewhere the record,
    and every run key, is what it was), and the stages' loader switches the LM head then."""
    from impetus.lm.fp32_kernels import OneDNNLinear, onednn_linear_available
    from impetus.pipelines.utils import load_base_lm

    if not onednn_linear_available():
        pytest.skip("this torch has no oneDNN linear")
    plain = _base_model(tiny, tmp_path / "m", dtype="bfloat16", fp32_matmul="default")
    onednn = _base_model(tiny, tmp_path / "m", dtype="bfloat16", fp32_matmul="onednn")
    assert "fp32_matmul" not in plain and onednn["fp32_matmul"] == "onednn"
    assert _model_key(plain) + "|fp32_matmul=onednn" == _model_key(onednn)  # shards sampled apart
    head = load_base_lm(onednn)[0].get_output_embeddings()
    assert type(head) is OneDNNLinear and head.weight.dtype == torch.float32
    assert type(load_base_lm(plain)[0].get_output_embeddings()) is torch.nn.Linear
