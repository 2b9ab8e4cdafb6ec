"""Benchmark: HFSampler vs a naive ``model.generate`` loop on SmolLM2-135M (CPU, fp32).

Usage::

    python benchmarks/bench_sampling.py [--problems 16 --n 8 --max-new-tokens 48 --batch-size 32]
    python benchmarks/bench_sampling.py --skip-naive --device cuda --dtype bfloat16 --compare-cpu
    python benchmarks/bench_sampling.py --dtype auto float32 --profile --problems 64   # what `make bench` runs
    python benchmarks/bench_sampling.py --dtype auto --record on --cpu-isa avx2   # as on a CPU without bf16

The naive loop always runs the model in fp32 with torch's own kernels (the reference every speed-up
is measured against); HFSampler runs it in each ``--dtype`` in turn (``auto``: bf16 where torch has a
fast path, as ``model.dtype: auto``; a dtype ``auto`` already resolved to is measured once), its fp32
matmuls on the kernels ``--fp32-matmul`` picks (``auto``: oneDNN on AMD CPUs, as
``model.fp32_matmul: auto``). ``--profile`` runs
HFSampler once more per dtype under the torch profiler and prints where a call's time goes, the
dtypes side by side (:mod:`impetus.lm.profile`: the forward's matmuls / attention / other ops /
Python, prefill, nucleus sampling, cache compaction, the rest).

Both sides sample the same few-shot arithmetic prompts with the same N / temperature / top_p /
stop strings; we report generated tokens per second (tokens kept up to the stop string, as each
method would hand them to the rest of the pipeline) and the ratio. Timings on shared CPUs are noisy.

``--compare-cpu`` (with ``--device cuda``) samples the same prompts and seeds on the CPU in fp32
and prints the agreement: the share of identical completions, and over those the largest
difference of the recorded per-token log-normaliser (``lse``) and mean log-prob. Tolerance: 1e-3
in fp32, 5e-2 in bf16/fp16 (rounding differs between devices, so a sampled token can flip where
two tokens are near-tied; after a flip the rows differ by construction).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# --cpu-isa avx2: the CPU kernels limited to AVX2 before torch loads them (ATen's own kernels, oneDNN
# and MKL read these at start-up), a proxy on this machine for a CPU without AVX-512 or a bf16 fast
# path (such as the AMD machines of this project's kind). It changes instructions, not clocks,
# caches or memory bandwidth, so its numbers estimate such a CPU and do not replace measuring one.
AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
if "--cpu-isa" in sys.argv[:-1] and sys.argv[sys.argv.index("--cpu-isa") + 1] == "avx2":
    os.environ.update(AVX2_ONLY)

import torch  # noqa: E402

from impetus.lm.fp32_kernels import choose_fp32_matmul  # noqa: E402
from impetus.lm.loading import load_model, resolve_model  # noqa: E402
from impetus.lm.precision import choose_dtype  # noqa: E402
from impetus.lm.profile import format_profiles, profile_call  # noqa: E402
from impetus.lm.sampler import SamplingParams, get_sampler  # noqa: E402

FEW_SHOT = (
    "Q: What is 23 + 45?\nA: 23 + 45 = 68. The answer is 68.\n\n"
    "Q: What is 17 + 36?\nA: 17 + 36 = 53. The answer is 53.\n\n"
    "Q: What is 58 + 29?\nA: 58 + 29 = 87. The answer is 87.\n\n"
)
STOP = ["\n", "\nQ:"]


def make_prompts(n_problems: int, seed: int = 1234) -> list[str]:
    """Few-shot prompts for random 2-digit additions (fixed seed, so runs are comparable)."""
    rng = random.Random(seed)
    pairs = [(rng.randint(10, 99), rng.randint(10, 99)) for _ in range(n_problems)]
    return [f"{FEW_SHOT}Q: What is {a} + {b}?\nA:" for a, b in pairs]


def naive(model, tok, prompts: list[str], params: SamplingParams) -> tuple[int, float]:
    """One ``model.generate`` call per problem with num_return_sequences=N and stop_strings."""
    tokens, t0 = 0, time.perf_counter()
    for i, prompt in enumerate(prompts):
        torch.manual_seed(params.seed + i)
        enc = tok(prompt, return_tensors="pt")
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=params.temperature,
            top_p=params.top_p,
            num_return_sequences=params.n,
            max_new_tokens=params.max_new_tokens,
            stop_strings=params.stop,
            tokenizer=tok,
            pad_token_id=tok.pad_token_id,
        )
        gen = out[:, enc["input_ids"].shape[1]:]
        # count real tokens: generate pads finished rows with pad_token_id
        tokens += int((gen != tok.pad_token_id).sum())
    return tokens, time.perf_counter() - t0


def ours(model, tok, prompts: list[str], params: SamplingParams, record: bool = True) -> tuple[int, float, list]:
    """HFSampler on the same prompts; counts kept tokens + the tokens that were cut (stop/EOS)."""
    sampler = get_sampler("hf", model, tok, record=record)
    produced = [0]
    t0 = time.perf_counter()
    res = sampler.generate(
        prompts, params, seeds=[params.seed + i for i in range(len(prompts))],
        progress=lambda new, done: produced.__setitem__(0, produced[0] + new),
    )
    return produced[0], time.perf_counter() - t0, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=16,
                    help="prompts sampled in one call (`make bench`: 64, the pipeline's sampling.shard_size)")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, nargs="+", default=[512],
                    help="HFSampler's batch sizes (default: the pipeline's sampling.batch_size, 512)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--record", choices=["on", "off", "both"], default="both",
                    help="record energies while decoding (on), not (off), or both, alternating")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per setting (the median is printed)")
    ap.add_argument("--device", default="cpu", help="torch device (cuda for the GPU path)")
    ap.add_argument("--dtype", nargs="+", default=["float32"], choices=["auto", "float32", "bfloat16", "float16"],
                    help="HFSampler's dtype(s), each measured in turn against the same naive loop (always fp32); "
                         "a value that resolves to one already listed is measured once")
    ap.add_argument("--profile", action="store_true",
                    help="print where HFSampler's time goes (torch profiler), one column per dtype")
    ap.add_argument("--compare-cpu", action="store_true", help="also sample on the CPU (fp32) and print the agreement")
    ap.add_argument("--prompts-parquet", default=None,
                    help="take the first --problems prompts from this table's `prompt` column (a pipeline run's "
                         "data/03_primary/prompts_eval.parquet) instead of the built-in additions")
    ap.add_argument("--stop", nargs="+", default=None, help=f"stop strings (default {STOP!r})")
    ap.add_argument("--cpu-isa", choices=["native", "avx2"], default="native",
                    help="avx2: limit the CPU kernels to AVX2 (both sides), a proxy for a CPU without a bf16 "
                         "fast path; there `auto` is fp32, as model.dtype: auto resolves on such a CPU")
    ap.add_argument("--fp32-matmul", choices=["auto", "default", "onednn"], default="auto",
                    help="CPU kernels of HFSampler's fp32 matmuls, as model.fp32_matmul (auto: oneDNN on AMD CPUs); "
                         "the naive loop always runs torch's own")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    dtypes: dict[str, str] = {}
    for requested in args.dtype:
        if requested == "auto" and args.cpu_isa == "avx2":
            dtype, reason = "float32", "auto: kernels limited to AVX2 (--cpu-isa avx2), no bf16 fast path"
        else:
            dtype, reason = choose_dtype(requested, args.device)
        dtypes.setdefault(dtype, reason)
    prompts = make_prompts(args.problems)
    if args.prompts_parquet:
        import pandas as pd

        prompts = pd.read_parquet(args.prompts_parquet)["prompt"].tolist()[: args.problems]
    stop = args.stop or STOP
    base = dict(n=args.n, temperature=0.8, top_p=0.95, max_new_tokens=args.max_new_tokens, stop=stop, seed=0)
    print(f"model={args.model} problems={len(prompts)} n={args.n} max_new_tokens={args.max_new_tokens} "
          f"T=0.8 top_p=0.95 stop={stop!r} threads={torch.get_num_threads()} device={args.device} "
          f"dtypes={list(dtypes)}")
    print(f"cpu={cpu_name()}; torch CPU kernels: {torch.backends.cpu.get_cpu_capability()}"
          + (f" (limited by {' '.join(f'{k}={v}' for k, v in AVX2_ONLY.items())})" if args.cpu_isa == "avx2" else ""))
    naive_tps = None
    if not args.skip_naive:
        ref, tok = load_model(resolve_model(args.model), device=args.device)
        nt, ns = naive(ref, tok, prompts, SamplingParams(**base))
        del ref
        naive_tps = nt / ns
        print(f"naive generate loop (fp32): {nt} tokens in {ns:.1f} s = {naive_tps:.1f} tokens/s")
    profiles = {}
    for dtype, reason in dtypes.items():
        args.dtype = dtype  # compare_cpu's tolerance follows the last dtype measured
        print(f"\ndtype {dtype}: {reason}")
        res, profiles[dtype] = measure(args, dtype, prompts, base, naive_tps)
    if profiles and all(p is not None for p in profiles.values()):
        print()
        print(format_profiles(profiles, f"HFSampler step profile, bs={args.batch_size[-1]}, record on"))
    if args.compare_cpu:
        compare_cpu(args, prompts, SamplingParams(**base, batch_size=args.batch_size[-1]), res)


def measure(args: argparse.Namespace, dtype: str, prompts: list[str], base: dict, naive_tps: float | None
            ) -> tuple[list, tuple[dict[str, float], float] | None]:
    """HFSampler in ``dtype`` at each batch size (median of ``--repeats``, record on/off alternating),
    printed with the ratio to the naive loop; returns the last run's generations and, with
    ``--profile``, the split of one more call."""
    model, tok = load_model(resolve_model(args.model), device=args.device, dtype=dtype, fp32_matmul=args.fp32_matmul)
    kernels, why = choose_fp32_matmul(args.fp32_matmul, args.device)
    print(f"attn={model.config._attn_implementation}; fp32 matmuls: {kernels} ({why})")
    # warm-up (first-call allocations / kernel selection) so no side pays it in the timing
    ours(model, tok, prompts[:1], SamplingParams(**{**base, "n": 2, "max_new_tokens": 4}))
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.record]
    for bs in args.batch_size:
        params = SamplingParams(**base, batch_size=bs)
        speed = {}
        for _ in range(args.repeats):  # alternate the settings so drifts in machine load hit both
            for record in modes:
                ot, os_, res = ours(model, tok, prompts, params, record=record)
                speed.setdefault(record, []).append((ot / os_, ot, os_, res))
        for record in modes:
            tps, ot, os_, res = sorted(speed[record], key=lambda x: x[0])[len(speed[record]) // 2]
            kept = sum(g.n_tokens for r in res for g in r)
            msg = (f"HFSampler {dtype} bs={bs:<3} record={'on ' if record else 'off'}: {ot} tokens ({kept} kept) "
                   f"in {os_:.1f} s = {tps:.1f} tokens/s")
            if naive_tps:
                msg += f"  ratio vs naive = {tps / naive_tps:.2f}x"
            print(msg)
        if len(modes) == 2:
            on = sorted(x[0] for x in speed[True])[len(speed[True]) // 2]
            off = sorted(x[0] for x in speed[False])[len(speed[False]) // 2]
            print(f"recording overhead: {100 * (off / on - 1):+.1f}% time (median of {args.repeats})")
    print("example completions:", [g.text for g in res[0][:3]])
    profile = None
    if args.profile:
        params = SamplingParams(**base, batch_size=args.batch_size[-1])
        profile = profile_call(lambda: ours(model, tok, prompts, params, record=True))
    return res, profile


def cpu_name() -> str:
    """The CPU's model name and its bf16-related flags (``lscpu``), to print beside every timing."""
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no lscpu)"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = [f for f in ("amx_bf16", "amx_tile", "avx512_bf16") if f in fields.get("Flags", "").split()]
    return f"{fields.get('Model name', '?').strip()} [{' '.join(flags) or 'no bf16 flags'}]"


def compare_cpu(args: argparse.Namespace, prompts: list[str], params: SamplingParams, res: list) -> None:
    """Sample the same prompts and seeds on the CPU in fp32; print how far ``res`` agrees with it."""
    import numpy as np

    cpu_model, tok = load_model(resolve_model(args.model), device="cpu", dtype="float32")
    _, _, ref = ours(cpu_model, tok, prompts, params, record=True)
    pairs = [(a, b) for ra, rb in zip(res, ref) for a, b in zip(ra, rb)]
    same = [(a, b) for a, b in pairs if a.token_ids == b.token_ids]
    d_lse = max((float(np.abs(np.asarray(a.record["lse"], float) - np.asarray(b.record["lse"], float)).max())
                 for a, b in same if a.record and len(a.record["lse"])), default=float("nan"))
    d_lp = max((abs(a.logprob_mean - b.logprob_mean) for a, b in same if a.n_tokens), default=float("nan"))
    tol = 1e-3 if args.dtype == "float32" else 5e-2
    print(f"agreement with CPU fp32: {len(same)}/{len(pairs)} identical completions "
          f"({100 * len(same) / max(len(pairs), 1):.1f}%); over those max |d lse| = {d_lse:.2e}, "
          f"max |d logprob_mean| = {d_lp:.2e} (tolerance {tol:g}: {'within' if max(d_lse, d_lp) <= tol else 'OUTSIDE'})")


if __name__ == "__main__":
    main()
