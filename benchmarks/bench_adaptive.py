"""Benchmark: adaptive N online against full N on one process's eval prompts (paired, same model).

Usage (after a run, so the eval prompts exist; the threshold is the one the run chose on train + dev,
``data/03_primary/adaptive_stop.json``, or the offline report's)::

    python benchmarks/bench_adaptive.py [--rule vote_margin --threshold 1.0 --wave 2 --repeats 2]
    python benchmarks/bench_adaptive.py --n 16 --wave 4 --threshold 0.5   # after `--env large` prompts

Samples the run's eval prompts (``data/03_primary/prompts_eval.parquet``) with the run's sampling
settings (``conf/base``: N, temperature, top-p, stop strings, max new tokens, batch size), in the
dtype ``model.dtype: auto`` picks, three ways, alternating, ``--repeats`` times each:

- ``full``: N samples per problem, ``shard_size`` problems per shard (what ``sampling.adaptive: off`` does);
- ``adaptive``: adaptive N as ``sampling.adaptive`` samples it: one ``generate`` call per wave of the
  problems still open, shards of ``shard_size x N`` problems (:meth:`WaveStop.shard_problems`);
- ``adaptive@<k>`` (``--adaptive-shard k ...``): the same with ``k``-problem shards;
- ``adaptive_small``: the same with ``shard_size``-problem shards (what the pipeline did at first).

Prints seconds (median over repeats), tokens, tokens/s and samples per problem for each, and the
CPU's name; ``--calls`` also prints each way's ``generate`` calls of the last repeat (rows, tokens,
the longest row's tokens, seconds), which splits a way's time into a cost per call and per row.
No shard files are written (a temporary folder per call).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from impetus.benchmarks.grading import answer_reader  # noqa: E402
from impetus.framework.config import BenchmarkParams, SamplingStageParams  # noqa: E402
from impetus.lm.loading import load_recorded  # noqa: E402
from impetus.lm.precision import choose_dtype  # noqa: E402
from bench_sampling import cpu_name  # noqa: E402 - the benchmarks folder is on sys.path
from impetus.lm.runner import sample_problems  # noqa: E402
from impetus.lm.sampler import SamplingParams, get_sampler  # noqa: E402
from impetus.pipelines.utils import sampling_params  # noqa: E402
from impetus.selection.online import WaveStop  # noqa: E402


def _conf(name: str) -> dict:
    return yaml.safe_load(Path(f"conf/base/parameters_{name}.yml").read_text())


def run_settings() -> tuple[SamplingStageParams, BenchmarkParams, SamplingParams]:
    """``conf/base``'s sampling stage and benchmark, and the SamplingParams a run derives from them."""
    sampling = SamplingStageParams(**_conf("sampling")["sampling"])
    bench = BenchmarkParams(**_conf("ingest")["benchmark"])
    return sampling, bench, sampling_params(sampling, bench)


def run_sampler(requested: str = "auto") -> tuple[Any, Any, str, str]:
    """The last run's model (``data/06_models/base_lm.json``) in ``requested``'s dtype, and its sampler:
    ``(model, sampler, dtype, why)``."""
    lm = yaml.safe_load(Path("data/06_models/base_lm.json").read_text())
    dtype, why = choose_dtype(requested, "cpu")
    model, tok = load_recorded(lm, device="cpu", dtype=dtype)
    return model, get_sampler("hf", model, tok, record=True), dtype, why


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rule", default="vote_margin")
    ap.add_argument("--threshold", type=float, default=1.0)
    ap.add_argument("--wave", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=None, help="full-N shard size (default: conf/base)")
    ap.add_argument("--n", type=int, default=None, help="N (default: conf/base; --env large runs use 16)")
    ap.add_argument("--adaptive-shard", type=int, nargs="+", default=None,
                    help="problems per adaptive shard, one 'adaptive@<k>' way each (default: the pipeline's rule)")
    ap.add_argument("--ways", nargs="+", default=None, help="only these ways (e.g. full adaptive)")
    ap.add_argument("--calls", action="store_true", help="print each way's generate calls (last repeat)")
    args = ap.parse_args()

    sampling, bench, params = run_settings()
    if args.n:
        params.n = args.n
    shard = args.shard_size or sampling.shard_size
    _, sampler, dtype, why = run_sampler()
    prompts = pd.read_parquet("data/03_primary/prompts_eval.parquet")[["problem_id", "prompt"]]
    problems = pd.read_parquet("data/02_intermediate/problems_eval.parquet")
    stop = WaveStop(args.rule, args.threshold, args.wave, answer_reader(bench.build(), problems))
    ways = {"full": (sampler, shard, None), "adaptive": (sampler, WaveStop.shard_problems(shard, params.n), stop),
            "adaptive_small": (sampler, shard, stop)}
    ways |= {f"adaptive@{k}": (sampler, k, stop) for k in args.adaptive_shard or []}
    if args.ways:
        ways = {k: v for k, v in ways.items() if k in args.ways or k.startswith("adaptive@")}
    print(f"CPU: {cpu_name()}; dtype {dtype} ({why}); {len(prompts)} problems, N = {params.n}, "
          f"rule {args.rule} at {args.threshold:g}, wave {args.wave}, batch {params.batch_size}")
    times: dict[str, list[float]] = {k: [] for k in ways}
    last: dict[str, pd.DataFrame] = {}
    calls: dict[str, list[tuple[int, int, int, float]]] = {}
    for _ in range(args.repeats):
        for name, (s, size, rule) in ways.items():
            calls[name] = _log_calls(s)
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                last[name], _ = sample_problems(s, prompts, params, tmp, shard_size=size, progress=False, stop=rule)
                times[name].append(time.perf_counter() - t0)
    full_s = statistics.median(times["full"])
    for name, df in last.items():
        sec, tokens = statistics.median(times[name]), int(df["n_tokens"].sum())
        print(f"{name:14s}  {sec:6.1f} s (runs {', '.join(f'{t:.1f}' for t in times[name])})  {tokens} tokens  "
              f"{tokens / sec:5.0f} tok/s  {len(df) / len(prompts):.2f} samples/problem  "
              f"{100 * (1 - sec / full_s):.0f}% of full N's seconds saved")
        if args.calls:
            print("    generate calls (rows, tokens, longest row's tokens, s): "
                  + ", ".join(f"({r}, {t}, {m}, {d:.2f})" for r, t, m, d in calls[name]))


def _log_calls(sampler: Any) -> list[tuple[int, int, int, float]]:
    """From now on, append ``(rows, tokens, longest row's tokens, seconds)`` of each of ``sampler``'s
    ``generate`` calls to the list returned (a fresh list per call of this function)."""
    log: list[tuple[int, int, int, float]] = []
    generate = getattr(sampler, "_unlogged_generate", sampler.generate)
    sampler._unlogged_generate = generate

    def logged(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = generate(*args, **kwargs)
        tokens = [g.n_tokens for gens in out for g in gens]
        log.append((len(tokens), sum(tokens), max(tokens, default=0), time.perf_counter() - t0))
        return out

    sampler.generate = logged
    return log


if __name__ == "__main__":
    main()
