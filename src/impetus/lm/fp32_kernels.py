"""Which CPU kernels run a model's fp32 matmuls: torch's own or oneDNN's (``model.fp32_matmul``).

On x86, torch runs an fp32 ``Linear`` through MKL's sgemm. MKL chooses its code path by the CPU's
vendor, and on AMD CPUs it takes a generic AVX2 path even where the CPU has AVX-512. oneDNN, which
torch ships too, chooses by the instructions the CPU has. Measured on an AMD EPYC (Zen 5, AVX-512,
2 cores; ``benchmarks/bench_fp32_matmul.py``, docs/benchmarks.md): the LM head's fp32 matmul
(``[96, 576] x [576, 49152]``) takes 33 ms through MKL and 13 ms through oneDNN, the decoder's fp32
matmuls about 2x less time; with the kernels limited to AVX2, oneDNN is as fast or faster (1.0-1.4x). Both
compute in fp32 throughout (oneDNN's ``brg_matmul:avx512_core`` on fp32 inputs and weights, no
reduced-precision math mode), so the logits differ only by the order of fp32 additions (~1e-5).

The fp32 matmuls are the LM head when the blocks run in bf16 (:mod:`impetus.lm.precision` keeps it
fp32 for the energies), and every matmul of an fp32 model. ``onednn_fp32_linears`` switches a
model's fp32 ``Linear`` modules to :class:`OneDNNLinear`; where a gradient is needed (V2's
``gradient`` mode) or the input is not an fp32 CPU tensor, it is ``Linear`` as before.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

def cpu_vendor(cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """The CPU's ``vendor_id`` (``GenuineIntel``, ``AuthenticAMD``) from ``/proc/cpuinfo``; None where
    there is none (macOS, ARM, containers without it)."""
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def onednn_linear_available() -> bool:
    """Whether this torch has oneDNN's fp32 linear (``torch.ops.mkldnn._linear_pointwise``)."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def choose_fp32_matmul(requested: str, device: str, vendor: str | None = None) -> tuple[str, str]:
    """``(choice, reason)``: ``default`` (torch's own kernels) or ``onednn``. ``auto`` takes oneDNN on an
    AMD CPU (MKL's generic path there is 2-3x slower, module docstring) and torch's own elsewhere: on
    Intel CPUs MKL takes its own best path, and no other CPU was measured. Not on CPU, or without
    oneDNN's linear in this torch: ``default``. ``vendor``: the CPU's vendor id (read when None)."""
    if device.split(":", 1)[0] != "cpu":
        return "default", f"{device} is not a CPU: torch's own kernels"
    if requested == "default":
        return "default", "set by model.fp32_matmul"
    if not onednn_linear_available():
        return "default", "this torch has no oneDNN linear (torch.ops.mkldnn._linear_pointwise)"
    if requested == "onednn":
        return "onednn", "set by model.fp32_matmul"
    vendor = cpu_vendor() if vendor is None else vendor
    if vendor == "AuthenticAMD":
        return "onednn", "auto: AMD CPU, where MKL takes a generic path and oneDNN is 2-3x faster in fp32"
    return "default", f"auto: {vendor or 'unknown'} CPU: torch's own kernels (MKL on x86)"


class OneDNNLinear(torch.nn.Linear):
    """``nn.Linear`` whose fp32 CPU forward without gradients runs oneDNN's fp32 matmul (module
    docstring); any other call is ``nn.Linear``'s. Same parameters, same state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dtype is torch.float32 and self.weight.dtype is torch.float32 and x.device.type == "cpu"
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))):
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def onednn_fp32_linears(model: Any) -> int:
    """Switch ``model``'s fp32 ``nn.Linear`` modules to :class:`OneDNNLinear` in place (the class
    only: parameters, tying and hooks are untouched); returns how many."""
    n = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.dtype is torch.float32:
            module.__class__ = OneDNNLinear
            n += 1
    return n


def apply_fp32_matmul(model: Any, requested: str, device: str) -> tuple[str, str]:
    """:func:`choose_fp32_matmul`, then switch the model's fp32 linears when it chose oneDNN; logged."""
    choice, reason = choose_fp32_matmul(requested, device)
    if choice == "onednn":
        n = onednn_fp32_linears(model)
        logger.info("fp32 matmuls of %d linear layers through oneDNN (%s)", n, reason)
    return choice, reason
