"""Benchmark: the pipeline's sampling at several (problems per shard, batch size) settings.

Usage (after a run, so its eval prompts and model record exist)::

    python benchmarks/bench_shards.py [--configs 16:128 64:512 --repeats 3]
    python benchmarks/bench_shards.py --configs 16:128 --share-prefix on off   # the prefix kept once, or copied

Samples the run's eval prompts (``data/03_primary/prompts_eval.parquet``, the first ``--problems``)
through the pipeline's own runner (:func:`impetus.lm.runner.sample_problems`: shards, per-problem
seeds, stop strings; a temporary shard folder per call) with ``conf/base``'s sampling settings, in
the dtype ``model.dtype: auto`` picks (or ``--dtype``). Each ``shard:batch`` setting runs in turn,
alternating, ``--repeats`` times; printed: seconds (median), tokens, tokens/s, the decoding loop's
forward calls (steps), and the speed-up over the first setting.

Why steps: a shard is one ``generate`` call, and its batch runs until the shard's longest row ends.
A step's cost is largely fixed (the LM head, the Python between ops), so the last steps, with a few
long rows live, cost almost as much as full ones; in bf16 a batch's rounding decides which rows run
long, so two settings' (or code versions') times on the same shard can differ by their stragglers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402

from bench_adaptive import run_sampler, run_settings  # noqa: E402 - the benchmarks folder is on sys.path
from bench_sampling import cpu_name  # noqa: E402
from impetus.lm.runner import sample_problems  # noqa: E402


def _setting(text: str) -> tuple[int, int]:
    shard, _, batch = text.partition(":")
    if not (shard.isdigit() and batch.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r}: expected <problems per shard>:<batch size>, e.g. 64:512")
    return int(shard), int(batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", type=_setting, nargs="+", default=[(16, 128), (64, 512)],
                    help="<problems per shard>:<batch size> settings; the first is the reference")
    ap.add_argument("--problems", type=int, default=96, help="the first this many eval prompts")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--share-prefix", nargs="+", choices=["on", "off"], default=["on"],
                    help="keep the shared few-shot prefix once (on, the sampler's default) or copy it per row")
    args = ap.parse_args()

    _, _, params = run_settings()
    model, sampler, dtype, why = run_sampler(args.dtype)
    steps = [0]
    model.model.register_forward_pre_hook(lambda *_: steps.__setitem__(0, steps[0] + 1))
    prompts = pd.read_parquet("data/03_primary/prompts_eval.parquet")[["problem_id", "prompt"]].iloc[: args.problems]
    print(f"CPU: {cpu_name()}; dtype {dtype} ({why}); {len(prompts)} problems, N = {params.n}, "
          f"{params.max_new_tokens} new tokens at most, stop {params.stop!r}")
    ways = [(s, b, p) for s, b in args.configs for p in args.share_prefix]
    runs: dict[tuple, list[tuple[float, int, int]]] = {w: [] for w in ways}
    share_default = sampler.share_prefix
    for _ in range(args.repeats):
        for shard, batch, prefix in ways:
            sampler.share_prefix = share_default and prefix == "on"
            steps[0] = 0
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                df, _ = sample_problems(sampler, prompts, replace(params, batch_size=batch), tmp,
                                        shard_size=shard, progress=False)
                runs[(shard, batch, prefix)].append((time.perf_counter() - t0, int(df["n_tokens"].sum()), steps[0]))
    ref = statistics.median(t for t, _, _ in runs[ways[0]])
    for (shard, batch, prefix), r in runs.items():
        sec = statistics.median(t for t, _, _ in r)
        print(f"shard {shard:4d}  batch {batch:4d}  prefix kept once: {prefix:3s}  {sec:6.1f} s "
              f"(runs {', '.join(f'{t:.1f}' for t, _, _ in r)})  {r[-1][1]} tokens  {r[-1][1] / sec:5.0f} tok/s  "
              f"{r[-1][2]} steps  {ref / sec:.2f}x the first")


if __name__ == "__main__":
    main()
