"""fp32 matmuls through oneDNN (impetus.lm.fp32_kernels): the choice per CPU, the same fp32 values,
gradients where they are needed, and a sampler that records the same statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from impetus.lm import fp32_kernels as fk
from impetus.lm.hf_sampler import HFSampler

from .conftest import make_tiny

needs_onednn = pytest.mark.skipif(not fk.onednn_linear_available(), reason="this torch has no oneDNN linear")


def test_cpu_vendor_is_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\n")
    assert fk.cpu_vendor(info) == "AuthenticAMD"
    info.write_text("processor\t: 0\n")
    assert fk.cpu_vendor(info) is None
    assert fk.cpu_vendor(tmp_path / "missing") is None


@needs_onednn
@pytest.mark.parametrize(("requested", "device", "vendor", "expected"), [
    ("auto", "cpu", "AuthenticAMD", "onednn"),
    ("auto", "cpu", "GenuineIntel", "default"),
    ("auto", "cpu", None, None),  # the machine's own vendor decides
    ("auto", "cuda:0", "AuthenticAMD", "default"),
    ("onednn", "cpu", "GenuineIntel", "onednn"),
    ("default", "cpu", "AuthenticAMD", "default"),
    ("onednn", "cuda", "GenuineIntel", "default"),
])
def test_auto_takes_onednn_on_amd_cpus_only(requested, device, vendor, expected):
    if vendor is None:
        vendor = fk.cpu_vendor() or "unknown"
        expected = "onednn" if vendor == "AuthenticAMD" else "default"
    choice, reason = fk.choose_fp32_matmul(requested, device, vendor=vendor)
    assert choice == expected and reason


def test_without_onednn_every_request_is_torchs_own(monkeypatch):
    monkeypatch.setattr(fk, "onednn_linear_available", lambda: False)
    assert fk.choose_fp32_matmul("onednn", "cpu", vendor="AuthenticAMD")[0] == "default"
    assert fk.choose_fp32_matmul("auto", "cpu", vendor="AuthenticAMD")[0] == "default"


@needs_onednn
def test_onednn_linear_equals_linear_in_fp32_and_keeps_gradients():
    """The switched layer gives nn.Linear's values to fp32 rounding, on 2-D and 3-D (sliced,
    non-contiguous) inputs; with gradients, and for bf16 inputs, it is nn.Linear itself."""
    torch.manual_seed(0)
    ref = torch.nn.Linear(48, 300, bias=True)
    layer = torch.nn.Linear(48, 300, bias=True)
    layer.load_state_dict(ref.state_dict())
    model = torch.nn.Sequential(layer, torch.nn.Linear(300, 4).to(torch.bfloat16))
    assert fk.onednn_fp32_linears(model) == 1  # the bf16 layer keeps its class
    assert type(layer) is fk.OneDNNLinear and type(model[1]) is torch.nn.Linear
    op = torch.ops.mkldnn._linear_pointwise
    x = torch.randn(3, 7, 48)
    with torch.inference_mode():
        for inp in (x, x[:, -1], x[:, 2:5]):
            torch.testing.assert_close(layer(inp), ref(inp), atol=1e-5, rtol=1e-5)
        assert torch.equal(layer(x), op(x, layer.weight, layer.bias, "none", [], ""))  # oneDNN really ran
    g = torch.randn(5, 48, requires_grad=True)
    layer(g).sum().backward()
    g_ref = g.detach().clone().requires_grad_(True)
    ref(g_ref).sum().backward()
    torch.testing.assert_close(g.grad, g_ref.grad)
    torch.testing.assert_close(layer.weight.grad, ref.weight.grad)
    with torch.inference_mode():
        half = x.to(torch.bfloat16)
        layer_b = layer.to(torch.bfloat16)
        assert layer_b(half).dtype == torch.bfloat16


@needs_onednn
def test_a_sampler_on_onednn_records_what_it_records_on_torchs_kernels():
    """Teacher-forced traces of the same answers (every recorded statistic and the states) agree
    to fp32 rounding between the two kernels, on the tiny model in fp32 (all its linears switched)."""
    model, tok = make_tiny(seed=2)
    prompt = tok("Q: 3+4?\nA:")["input_ids"]
    answers = [tok(" 7. ok")["input_ids"], tok(" 12")["input_ids"]]
    ref = HFSampler(model, tok).encode_answers(prompt, answers, keep_past=False)
    n = fk.onednn_fp32_linears(model)
    assert n == sum(isinstance(m, torch.nn.Linear) for m in model.modules()) and n > 1
    got = HFSampler(model, tok).encode_answers(prompt, answers, keep_past=False)
    for a, b in zip(got, ref):
        for key in ("lse", "tok_logit", "deepconf", "lse_temp", "states"):
            np.testing.assert_allclose(getattr(a, key), getattr(b, key), atol=1e-4, rtol=1e-4)
