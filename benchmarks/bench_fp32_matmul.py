"""One fp32 matmul at a time through torch's own kernels (``F.linear``: MKL on x86) and oneDNN's
(``torch.ops.mkldnn._linear_pointwise``, what ``model.fp32_matmul: onednn`` runs), the shapes of
SmolLM2's LM head and decoder layers (``impetus.lm.fp32_kernels``).

Usage::

    python benchmarks/bench_fp32_matmul.py                 # this CPU's own kernels
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \\
        python benchmarks/bench_fp32_matmul.py             # limited to AVX2 (a CPU without AVX-512)

Prints per shape the median milliseconds of each (10 calls after 2 warm-up calls, 50 for the small
shapes) and the largest difference between their outputs; logits of the LM head's shape reach ~7.
"""

from __future__ import annotations

import statistics
import subprocess
import time

import torch
import torch.nn.functional as F

SHAPES = [  # (rows, in, out, what)
    (512, 576, 49152, "LM head, batch 512"),
    (96, 576, 49152, "LM head, an EBD batch"),
    (512, 576, 1536, "MLP up"),
    (512, 1536, 576, "MLP down"),
    (96, 576, 576, "attention projection"),
]


def _ms(fn, calls: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    try:
        model = [ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True)
                 .stdout.splitlines() if ln.startswith("Model name")][0]
    except (OSError, IndexError):
        model = "unknown"
    print(f"cpu={model}; torch CPU kernels: {torch.backends.cpu.get_cpu_capability()}")
    print("| shape (rows x in -> out) | torch's own ms | oneDNN ms | largest |difference| |")
    print("|---|---:|---:|---:|")
    with torch.inference_mode():
        for rows, n_in, n_out, what in SHAPES:
            x, w = torch.randn(rows, n_in), torch.randn(n_out, n_in) * 0.05
            calls = 10 if n_out > 10_000 else 50
            mkl = _ms(lambda: F.linear(x, w), calls)
            onednn = _ms(lambda: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""), calls)
            diff = (F.linear(x, w) - torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")).abs().max()
            print(f"| {rows} x {n_in} -> {n_out} ({what}) | {mkl:.2f} | {onednn:.2f} | {float(diff):.1e} |")


if __name__ == "__main__":
    main()
