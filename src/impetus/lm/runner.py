"""Resumable, sharded sampling of N candidates per problem.

Problems are split into fixed chunks (``shard_size`` problems, input order). Each finished chunk
is written atomically (temp file + ``os.replace``) as ``shard_dir/<run_key>/shard_00012.parquet``
next to a JSON manifest holding the run key, the sampling params and the problem ids. On a rerun a
shard is reused only when its manifest matches exactly, so a shard from another model, prompt set,
seed or parameter set is never mixed in. A killed run therefore loses at most the shard in flight.

Seeds: the seed of a problem is ``stable_seed(params.seed, problem_id)``, independent of shard
boundaries and of the order problems are processed, so an interrupted-then-resumed run gives the
same table as an uninterrupted one.

``gen_seconds`` of a candidate is the wall time the sampler attributes to its row (each forward
pass's time split equally over the rows it served); the per-problem latency used in the stats is
the sum over the problem's rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from impetus.lm.sampler import Sampler, SamplingParams

logger = logging.getLogger(__name__)

CANDIDATE_COLUMNS = [
    "problem_id", "sample_idx", "completion", "n_tokens", "finish_reason", "logprob_mean", "seed", "gen_seconds",
]


@dataclass
class SamplingStats:
    """Throughput and latency of one ``sample_problems`` call (only shards sampled in this call)."""

    problems: int = 0
    problems_reused: int = 0
    tokens: int = 0
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    p50_seconds_per_problem: float = 0.0
    p95_seconds_per_problem: float = 0.0

    def to_dict(self) -> dict[str, float]:
        """Flat dict for MLflow metrics."""
        return {k: float(v) for k, v in asdict(self).items()}


def stable_seed(seed: int, problem_id: Any) -> int:
    """Per-problem seed from the run seed and the problem id (no Python ``hash``: it is salted)."""
    h = hashlib.blake2b(f"{int(seed)}|{problem_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 31) - 1)


def make_run_key(model_id: str, params: SamplingParams, prompts: pd.DataFrame | list[str]) -> str:
    """Hash of model id + result-relevant params + (problem_id, prompt) pairs, as a folder name."""
    h = hashlib.sha256()
    h.update(str(model_id).encode())
    h.update(json.dumps(params.result_dict(), sort_keys=True).encode())
    if isinstance(prompts, pd.DataFrame):
        items = zip(prompts["problem_id"].astype(str), prompts["prompt"].astype(str))
    else:
        items = ((str(i), str(p)) for i, p in enumerate(prompts))
    for pid, prompt in items:
        h.update(b"\x00" + pid.encode() + b"\x01" + prompt.encode())
    return h.hexdigest()[:16]


def _write_atomic(path: Path, write: Any) -> None:
    """Write via ``write(tmp_path)`` then rename; a crash leaves only a stray ``.tmp`` file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _manifest(run_key: str, params: SamplingParams, problem_ids: list[str], shard: int) -> dict[str, Any]:
    return {"run_key": run_key, "shard": shard, "params": params.result_dict(),
            "params_hash": params.digest(), "problem_ids": problem_ids}


def _load_shard(pq: Path, mf: Path, expected: dict[str, Any]) -> pd.DataFrame | None:
    """Return the shard's table if it exists and its manifest matches, else None."""
    if not (pq.is_file() and mf.is_file()):
        return None
    try:
        found = json.loads(mf.read_text())
    except (OSError, json.JSONDecodeError):
        logger.warning("unreadable manifest %s; resampling its shard", mf)
        return None
    if found != expected:
        logger.warning("shard %s was made with another config; resampling it", pq)
        return None
    return pd.read_parquet(pq)


def _sample_shard(sampler: Sampler, chunk: pd.DataFrame, params: SamplingParams,
                  progress: Any) -> pd.DataFrame:
    """Sample one shard and return its candidate rows."""
    seeds = [stable_seed(params.seed, pid) for pid in chunk["problem_id"]]
    gens = sampler.generate(list(chunk["prompt"].astype(str)), params, seeds, progress=progress)
    rows = []
    for pid, seed, cands in zip(chunk["problem_id"], seeds, gens):
        for j, g in enumerate(cands):
            rows.append({
                "problem_id": pid, "sample_idx": j, "completion": g.text, "n_tokens": g.n_tokens,
                "finish_reason": g.finish_reason, "logprob_mean": g.logprob_mean, "seed": seed,
                "gen_seconds": g.seconds,
            })
    df = pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)
    return df.astype({"sample_idx": "int64", "n_tokens": "int64", "seed": "int64",
                      "logprob_mean": "float64", "gen_seconds": "float64"})


def sample_problems(
    sampler: Sampler,
    problems: pd.DataFrame,
    params: SamplingParams,
    shard_dir: str | Path,
    shard_size: int = 16,
    run_key: str | None = None,
    progress: bool = True,
    model_id: str = "model",
) -> tuple[pd.DataFrame, SamplingStats]:
    """Sample ``params.n`` candidates for every row of ``problems`` (columns problem_id, prompt).

    Returns the candidates table (``CANDIDATE_COLUMNS``, ordered like ``problems`` then
    sample_idx) and the ``SamplingStats`` of the shards sampled by this call. ``run_key`` defaults
    to ``make_run_key(model_id, params, problems)``.
    """
    missing = {"problem_id", "prompt"} - set(problems.columns)
    if missing:
        raise ValueError(f"problems table lacks columns {sorted(missing)}")
    if problems["problem_id"].duplicated().any():
        dup = problems.loc[problems["problem_id"].duplicated(), "problem_id"].iloc[0]
        raise ValueError(f"duplicate problem_id {dup!r}: ids must be unique for seeding and resume")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    run_key = run_key or make_run_key(model_id, params, problems)
    out_dir = Path(shard_dir) / run_key
    out_dir.mkdir(parents=True, exist_ok=True)
    problems = problems.reset_index(drop=True)
    n_shards = (len(problems) + shard_size - 1) // shard_size

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(problems), desc=f"sampling {run_key[:8]}", unit="problem")
    stats = SamplingStats(problems=len(problems))
    per_problem: list[float] = []
    tok_counter = [0, time.perf_counter()]

    def on_step(new_tokens: int, _done: int) -> None:
        tok_counter[0] += new_tokens
        if bar is not None:
            dt = time.perf_counter() - tok_counter[1]
            bar.set_postfix(tok_s=f"{tok_counter[0] / max(dt, 1e-9):.0f}", refresh=False)

    tables = []
    for s in range(n_shards):
        chunk = problems.iloc[s * shard_size:(s + 1) * shard_size]
        ids = [str(x) for x in chunk["problem_id"]]
        pq, mf = out_dir / f"shard_{s:05d}.parquet", out_dir / f"shard_{s:05d}.json"
        expected = _manifest(run_key, params, ids, s)
        df = _load_shard(pq, mf, expected)
        if df is not None:
            stats.problems_reused += len(chunk)
        else:
            t0 = time.perf_counter()
            df = _sample_shard(sampler, chunk, params, on_step)
            stats.seconds += time.perf_counter() - t0
            stats.tokens += int(df["n_tokens"].sum())
            per_problem += df.groupby("problem_id", sort=False)["gen_seconds"].sum().tolist()
            # parquet first, manifest last: a shard counts as done only once its manifest exists
            _write_atomic(pq, lambda p: df.to_parquet(p, index=False))
            _write_atomic(mf, lambda p: p.write_text(json.dumps(expected, indent=1)))
            logger.info("shard %d/%d: %d problems in %.1f s", s + 1, n_shards, len(chunk),
                        time.perf_counter() - t0)
        tables.append(df)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()

    stats.tokens_per_s = stats.tokens / stats.seconds if stats.seconds > 0 else 0.0
    if per_problem:
        stats.p50_seconds_per_problem = float(np.percentile(per_problem, 50))
        stats.p95_seconds_per_problem = float(np.percentile(per_problem, 95))
    logger.info("sampling %s: %s", run_key, stats.to_dict())
    result = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=CANDIDATE_COLUMNS)
    return result, stats
