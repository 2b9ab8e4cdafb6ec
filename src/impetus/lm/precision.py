"""The dtype a model runs in: ``model.dtype: auto`` chooses bf16 where the hardware has a fast path,
and a half-precision model keeps the parts the energies read in fp32 (issue 26).

Why mixed: the energies are differences of raw logits (spilled energy ``lse[i+1] − f_i[x_i]``,
arXiv:2602.18671), DeepConf's top-20 mean (arXiv:2508.15260) and the last layer's states. In bf16 a
logit of ~20 has a step of 0.125, the size of the differences the energies rank by. So only the
decoder blocks (almost all of the matmuls) and the input embeddings run in half precision; the final
norm, the LM head and the rotary tables stay in fp32, and the final norm's input is cast up before it
runs, so every recorded statistic and state is computed in fp32 from the blocks' output. Measured on
SmolLM2 (docs/benchmarks.md), a whole-bf16 model records energies about as close to fp32 as this one,
while the fp32 head costs ~15% of a bf16 step: the split follows issue 26's requirement, not a gain
measured so far.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

HALF = ("bfloat16", "float16")


def cpu_bf16_fast_path() -> tuple[bool, str]:
    """Whether torch has a bf16 matmul fast path on this CPU, and what it found (asked of torch's own
    CPU detection, never of the CPU's name: AMX tiles or AVX-512 BF16 instructions)."""
    amx, avx = bool(torch.cpu._is_amx_tile_supported()), bool(torch.cpu._is_avx512_bf16_supported())
    found = [name for name, ok in (("AMX", amx), ("AVX512-BF16", avx)) if ok]
    return bool(found), ", ".join(found) if found else "neither AMX nor AVX512-BF16"


_WARNED: set[tuple[str, str]] = set()  # (setting, dtype) already warned about in this process


def choose_dtype(requested: str, device: str, setting: str = "model.dtype") -> tuple[str, str]:
    """``(dtype, reason)``: ``requested`` itself unless it is ``auto``, which takes bf16 on a CUDA
    device that supports it or a CPU with a bf16 fast path, and fp32 elsewhere (MPS included).
    ``setting``: the parameter ``requested`` came from, named in the reason and in the warning (once
    per process) that a half dtype on a CPU without a fast path will be slow."""
    kind = device.split(":", 1)[0]
    if requested != "auto":
        if requested in HALF and kind == "cpu":
            fast, found = cpu_bf16_fast_path()
            if not fast and (setting, requested) not in _WARNED:
                _WARNED.add((setting, requested))
                logger.warning("%s=%s on a CPU without a bf16 fast path (%s): expect it to run many times slower "
                               "than float32", setting, requested, found)
        return requested, f"set by {setting}"
    if kind == "cuda":
        index = torch.device(device).index or 0
        if torch.cuda.is_bf16_supported():
            return "bfloat16", f"auto: CUDA device {index} ({torch.cuda.get_device_name(index)}) supports bf16"
        return "float32", f"auto: CUDA device {index} has no bf16 support"
    if kind == "cpu":
        fast, found = cpu_bf16_fast_path()
        return ("bfloat16" if fast else "float32"), f"auto: torch reports {found} on this CPU"
    return "float32", f"auto: no bf16 fast path is known for device {device!r}"


def final_norm(model: Any, required: bool = True) -> torch.nn.Module | None:
    """The decoder's final norm (``model.model.norm``: Llama, Gemma, Qwen, Mistral), which the
    recording hooks read too; without one, an error (``required``) or None."""
    norm = getattr(getattr(model, "model", None), "norm", None)
    if norm is None and required:
        raise ValueError(f"{type(model).__name__} has no model.model.norm, so a half-precision run cannot keep "
                         "its final norm and LM head in fp32; set model.dtype: float32")
    return norm


def _upcast_input(_module: Any, args: tuple) -> tuple:
    return (args[0].float(), *args[1:])


def to_mixed_precision(model: Any, dtype: str) -> Any:
    """Cast ``model`` (loaded in fp32) in place to ``dtype`` except its final norm, LM head and rotary
    tables; the final norm's input is cast to fp32 by a pre-hook, so its output, the logits and the
    recorded states are fp32. A head tied to the input embeddings is untied first (an fp32 copy), so
    the embeddings can go half with the blocks. Returns ``model``."""
    half = getattr(torch, dtype)
    head, norm = model.get_output_embeddings(), final_norm(model)
    embed = model.get_input_embeddings()
    if head is not None and embed is not None and head.weight is embed.weight:
        head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
        model.config.tie_word_embeddings = False  # so a save or a re-tie keeps the two apart
    keep = [m for m in (head, norm) if m is not None]
    keep += [m for name, m in model.named_modules() if "rotary" in name.split(".")[-1]]
    kept = {id(p) for m in keep for p in [*m.parameters(), *m.buffers()]}
    with torch.no_grad():
        for module in model.modules():
            for p in list(module.parameters(recurse=False)):
                if id(p) not in kept and p.is_floating_point():
                    p.data = p.data.to(half)
            for name, b in list(module.named_buffers(recurse=False)):
                if id(b) not in kept and b.is_floating_point():
                    module._buffers[name] = b.to(half)
    norm.register_forward_pre_hook(_upcast_input)
    logger.info("%s: decoder blocks in %s; final norm, LM head and rotary tables in float32",
                type(model).__name__, dtype)
    return model
