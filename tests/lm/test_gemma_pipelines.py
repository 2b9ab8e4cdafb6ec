"""The v2_latent and ebd stages on the tiny random Gemma-3 (sliding-window layers, soft-capped
logits) instead of the tiny Llama: the same catalog as tests/latent/test_v2_ebd_pipelines.py, with
its model swapped. EBD must fall back to re-encoding; V2 must run both modes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from kedro.runner import SequentialRunner

from impetus.pipelines.ebd.pipeline import create_pipeline as ebd_pipeline
from impetus.pipelines.v2_latent.pipeline import create_pipeline as v2_pipeline

from .test_gemma_tiny import tiny_gemma

# tests/latent is not a package: load its module by path (its own copy, so patching it is local)
_spec = importlib.util.spec_from_file_location(
    "_llama_slices", Path(__file__).resolve().parents[1] / "latent" / "test_v2_ebd_pipelines.py")
llama_slices = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(llama_slices)


@pytest.fixture()
def catalog(tmp_path, monkeypatch):
    monkeypatch.setattr(llama_slices, "tiny_llama", lambda *a, **k: tiny_gemma())  # hidden 64, as the Llama
    return llama_slices.catalog.__wrapped__(tmp_path)


def test_v2_runs_on_gemma(catalog):
    SequentialRunner().run(v2_pipeline(), catalog)
    methods = catalog["v2_metrics"].load()["methods"]
    assert {"v2_reinforce_single", "v2_gradient_v1", "v2_latentseek_single", "v2_topk_pg_v1"} <= set(methods)
    for name, m in methods.items():
        assert 0.0 <= m["accuracy"] <= 1.0 and m["tokens_per_problem"] > 0
        if m["family"] == "v2" and name.startswith(("v2_reinforce", "v2_gradient")):  # these keep the best visited
            assert m["energy_after"] <= m["energy_before"] + 1e-9


def test_ebd_reencodes_on_gemma(catalog):
    SequentialRunner().run(ebd_pipeline(), catalog)
    result = catalog["ebd_metrics"].load()
    assert result["reuse_cache"] is False
    assert "proposals re-encode prompt + prefix" in catalog["ebd_report"].load()
    assert {"ebd_lowest", "ebd_vote"} <= set(result["methods"])
    assert 0.0 <= result["methods"]["ebd_lowest"]["acceptance"] <= 1.0
    answers = catalog["ebd_answers"].load()
    assert len(answers) == 2 * 2 and answers["tokens"].gt(0).all()
