"""Benchmark: sampling throughput with ``executor=ray`` on a local Ray cluster of 1-CPU nodes.

Usage::

    python benchmarks/bench_ray.py [--problems 48 --n 8 --shard-size 8 --nodes 1 2]

Runs the same shards (SmolLM2-135M, fp32, CPU) through :func:`impetus.lm.runner.sample_problems`:

1. ``local``: this process with 1 torch thread, i.e. what one 1-CPU node does alone;
2. ``ray`` on a ``ray.cluster_utils.Cluster`` of K nodes with 1 CPU each (one actor per node,
   1 torch thread each), for each K in ``--nodes``;
3. the control without Ray: K plain processes at once, 1 thread each, each sampling every K-th
   shard. On one machine K "nodes" share its memory bandwidth and caches, so this, not K x the
   lone process, is what K workers can reach here; Ray's own cost is the gap between 2 and 3.

Throughput is generated tokens over the wall time from the first shard handed out to the last one
written by the driver (the runner's ``tokens_per_s``), so Arrow transfers and shard writes count;
actors are started and their model loaded before the clock starts (a pool is kept across splits),
and run at niceness 0 (``RAY_worker_niceness=0``, as the executor sets for a Ray it starts).
Printed: tokens/s of each, K nodes against K x the local 1-CPU rate, and whether every candidate
equals the local one (texts exactly; recorded floats within 1e-4). Nothing else should run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bench_sampling import STOP, make_prompts  # noqa: E402

from impetus.energy.recorded import RECORD_COLUMNS  # noqa: E402
from impetus.lm.executors import LocalExecutor, SamplerSpec  # noqa: E402
from impetus.lm.loading import resolve_model  # noqa: E402
from impetus.lm.runner import sample_problems  # noqa: E402
from impetus.lm.sampler import SamplingParams  # noqa: E402


def same(a: pd.DataFrame, b: pd.DataFrame) -> tuple[float, float]:
    """Share of rows with identical text/tokens, and the largest recorded-float difference."""
    keys = ["problem_id", "sample_idx", "completion", "n_tokens", "finish_reason"]
    equal = float((a[keys].reset_index(drop=True) == b[keys].reset_index(drop=True)).all(axis=1).mean())
    diff = 0.0
    for col in RECORD_COLUMNS:
        for x, y in zip(a[col], b[col]):
            x, y = np.asarray(x, float), np.asarray(y, float)
            if x.shape == y.shape and x.size:
                diff = max(diff, float(np.abs(x - y).max()))
    return equal, diff


def run(executor, problems: pd.DataFrame, params: SamplingParams, shard_size: int):
    with tempfile.TemporaryDirectory() as folder:
        df, stats = sample_problems(None, problems, params, folder, shard_size=shard_size, run_key="bench",
                                    progress=False, executor=executor)
    return df, stats


def on_cluster(nodes: int, spec: SamplerSpec, problems: pd.DataFrame, params: SamplingParams, shard_size: int):
    import ray
    from ray.cluster_utils import Cluster

    from impetus.lm.ray_executor import RayConfig, RayExecutor

    os.environ.setdefault("RAY_worker_niceness", "0")  # as the executor does for a Ray it starts (see there)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
    ex = RayExecutor(spec, RayConfig(address="", workers=None, cpus_per_worker=1, gpus_per_worker=0, device=None,
                                     max_retries=3, dashboard=False))
    try:
        hosts = ex.worker_info()  # actors up, model loaded: not timed
        assert len({w["node"] for w in hosts}) == nodes, hosts
        run(ex, problems.iloc[:nodes], params, 1)  # warm-up: one 1-problem shard per actor
        return run(ex, problems, params, shard_size)
    finally:
        ex.close()
        ray.shutdown()
        cluster.shutdown()


def part(args: argparse.Namespace, spec: SamplerSpec, problems: pd.DataFrame, params: SamplingParams) -> None:
    """One process of the control: every K-th shard (``--part i/K``), 1 thread; prints tokens and span."""
    i, k = (int(x) for x in args.part.split("/"))
    torch.set_num_threads(1)
    local = LocalExecutor(spec.build())
    run(local, problems.iloc[:1], params, args.shard_size)  # warm-up
    shards = [problems.iloc[s:s + args.shard_size] for s in range(0, len(problems), args.shard_size)]
    mine = pd.concat(shards[i::k])
    barrier = Path(os.environ["BENCH_BARRIER"])  # start together, once every process has its model
    (barrier / str(i)).touch()
    while len(list(barrier.iterdir())) < k:
        time.sleep(0.01)
    t0 = time.time()
    _, st = run(local, mine, params, args.shard_size)
    print(f"PART {st.tokens} {t0:.3f} {time.time():.3f}", flush=True)


def control(k: int, argv: list[str]) -> tuple[int, float]:
    """K plain processes at once (started together after their model loads); tokens, wall span."""
    import subprocess

    rows = []
    with tempfile.TemporaryDirectory() as barrier:
        env = {**os.environ, "BENCH_BARRIER": barrier}
        procs = [subprocess.Popen([sys.executable, __file__, *argv, "--part", f"{i}/{k}"], stdout=subprocess.PIPE,
                                  text=True, env=env) for i in range(k)]
        for p in procs:
            out, _ = p.communicate()
            rows += [line.split()[1:] for line in out.splitlines() if line.startswith("PART ")]
    tokens = sum(int(r[0]) for r in rows)
    return tokens, max(float(r[2]) for r in rows) - min(float(r[1]) for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=48)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=8)
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)  # a control process (internal)
    args = ap.parse_args()

    path = resolve_model(args.model)
    lm = {"path": str(path), "name_or_path": args.model, "device": "cpu", "dtype": "float32"}
    spec = SamplerSpec(lm, "hf", record=True)
    prompts = make_prompts(args.problems)
    problems = pd.DataFrame({"problem_id": [f"b{i:03d}" for i in range(len(prompts))], "prompt": prompts})
    params = SamplingParams(n=args.n, temperature=0.8, top_p=0.95, max_new_tokens=args.max_new_tokens, stop=STOP,
                            batch_size=args.batch_size, seed=0)
    if args.part:
        return part(args, spec, problems, params)
    print(f"model={args.model} problems={args.problems} n={args.n} max_new_tokens={args.max_new_tokens} "
          f"batch_size={args.batch_size} shard_size={args.shard_size} (shards: {-(-args.problems // args.shard_size)})")

    torch.set_num_threads(1)  # one 1-CPU node alone
    local = LocalExecutor(spec.build())
    run(local, problems.iloc[:1], params, args.shard_size)  # warm-up, as the actors' first shard is not timed either
    t0 = time.perf_counter()
    ref, st = run(local, problems, params, args.shard_size)
    print(f"local, 1 thread          : {st.tokens} tokens in {st.seconds:.1f} s = {st.tokens_per_s:.1f} tokens/s "
          f"(wall {time.perf_counter() - t0:.1f} s)")
    for k in args.nodes:
        df, sr = on_cluster(k, spec, problems, params, args.shard_size)
        equal, diff = same(df, ref)
        print(f"ray, {k} x 1-CPU node{'s' if k > 1 else ' '}    : {sr.tokens} tokens in {sr.seconds:.1f} s = "
              f"{sr.tokens_per_s:.1f} tokens/s = {sr.tokens_per_s / (k * st.tokens_per_s):.2f} x {k} x local; "
              f"identical rows {100 * equal:.1f}%, max recorded diff {diff:.1e}")
        if k > 1:
            argv = [a for a in sys.argv[1:]]
            tokens, span = control(k, argv)
            print(f"control, {k} processes    : {tokens} tokens in {span:.1f} s = {tokens / span:.1f} tokens/s = "
                  f"{tokens / span / (k * st.tokens_per_s):.2f} x {k} x local; ray reaches "
                  f"{sr.tokens_per_s / (tokens / span):.2f} x the control")


if __name__ == "__main__":
    main()
