"""Resumable, sharded sampling of N candidates per problem.

Problems are split into fixed chunks (``shard_size`` problems, input order). Each finished chunk
is written atomically (temp file + ``os.replace``) as ``shard_dir/<run_key>/shard_00012.parquet``
next to a JSON manifest holding the run key, the sampling params and the problem ids. On a rerun a
shard is reused only when its manifest matches exactly, so a shard from another model, prompt set,
seed or parameter set is never mixed in. A killed run therefore loses at most the shard in flight.

Seeds: the seed of a problem is ``stable_seed(params.seed, problem_id)``, independent of shard
boundaries and of the order problems are processed, so an interrupted-then-resumed run gives the
same table as an uninterrupted one.

Trust but verify: a shard on disk is checked against its manifest before reuse (it must read as
parquet, hold exactly the manifest's problem ids with ``n`` rows each, sample_idx 0..n-1 once per
problem, and every candidate column). A truncated file, a valid parquet of *another* shard
copied over it, or a shard whose manifest (or parquet) is gone, is logged as a WARNING naming the file and the reason, then resampled and
overwritten; a disk error therefore never kills a rerun nor leaks wrong rows into the table.

Concurrency: two runs in one project folder share the shard folder. Each shard is sampled under an
exclusive ``fcntl.flock`` on ``shard_XXXXX.lock`` next to it; a process that finds the lock taken
logs that it waits, and once it holds the lock re-checks the shard, so a shard finished meanwhile
by the other process is reused, never sampled twice. (Lock files are left in place: deleting one
while another process waits on it would let a third process lock a different inode.)

``gen_seconds`` of a candidate is the wall time the sampler attributes to its row (each forward
pass's time split equally over the rows it served); the per-problem latency used in the stats is
the sum over the problem's rows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

try:  # POSIX only; elsewhere shards are not locked (one run per folder, as before)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

import numpy as np
import pandas as pd

from impetus.energy.recorded import RECORD_COLUMNS, RECORD_KEYS as _RECORD_KEYS  # the one record schema
from impetus.lm.sampler import Sampler, SamplingParams

logger = logging.getLogger(__name__)

CANDIDATE_COLUMNS = [
    "problem_id", "sample_idx", "completion", "n_tokens", "finish_reason", "logprob_mean", "seed", "gen_seconds",
]

SpanFn = Callable[[str, str], "tuple[int, int] | None"]
"""``span(problem_id, completion) -> (start, end)`` character span of the answer, or None."""


class IncompleteCandidatesError(RuntimeError):
    """The candidates table does not hold every problem x ``n`` samples exactly once."""


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


def _manifest(run_key: str, params: SamplingParams, problem_ids: list[str], shard: int,
              record: bool = False) -> dict[str, Any]:
    return {"run_key": run_key, "shard": shard, "params": params.result_dict(),
            "params_hash": params.digest(), "problem_ids": problem_ids, "record": record}


def shard_problem(df: pd.DataFrame, problem_ids: list[str], n: int) -> str | None:
    """Why ``df`` is not a complete shard for ``problem_ids`` x ``n`` samples, or None if it is.

    Checks: every ``CANDIDATE_COLUMNS`` column present; the set of problem ids equal to
    ``problem_ids``; ``len(problem_ids) * n`` rows; sample_idx in 0..n-1; no duplicate
    (problem_id, sample_idx). Together these mean each problem has each sample exactly once.
    """
    missing = [c for c in CANDIDATE_COLUMNS if c not in df.columns]
    if missing:
        return f"missing columns {missing}"
    found = set(df["problem_id"].astype(str))
    want = set(problem_ids)
    if found != want:
        extra, lacking = sorted(found - want), sorted(want - found)
        return (f"problem ids differ from the manifest ({len(extra)} unexpected, e.g. {extra[:3]}; "
                f"{len(lacking)} missing, e.g. {lacking[:3]})")
    if len(df) != len(problem_ids) * n:
        return f"{len(df)} rows, expected {len(problem_ids)} problems x n={n} = {len(problem_ids) * n}"
    idx = pd.to_numeric(df["sample_idx"], errors="coerce")
    bad = df.loc[idx.isna() | (idx < 0) | (idx >= n) | (idx != idx.round()), "sample_idx"]
    if len(bad):
        return f"sample_idx outside 0..{n - 1}, e.g. {bad.head(3).tolist()}"
    keys = pd.DataFrame({"p": df["problem_id"].astype(str), "s": idx.astype("int64")})
    dup = keys.duplicated()
    if dup.any():
        p, k = keys.loc[dup].iloc[0]
        return f"duplicate (problem_id, sample_idx) rows, e.g. ({p!r}, {k})"
    return None


def _in_order(df: pd.DataFrame, problem_ids: list[str]) -> pd.DataFrame:
    """Rows sorted like ``problem_ids`` then by sample_idx (a valid shard in any row order)."""
    pos = {p: i for i, p in enumerate(problem_ids)}
    key = df["problem_id"].astype(str).map(pos) * (len(df) + 1) + df["sample_idx"].astype("int64")
    return df.iloc[np.argsort(key.to_numpy(), kind="stable")].reset_index(drop=True)


def _load_shard(pq: Path, mf: Path, expected: dict[str, Any], n: int) -> pd.DataFrame | None:
    """The shard's table if it exists, matches its manifest and passes ``shard_problem``; else None.

    A shard that exists but fails a check is logged as a WARNING (file and reason) so the caller
    resamples and overwrites it; only "not there yet" (neither file) is silent. One file without
    the other (a deleted manifest, or a crash between the parquet and manifest writes) is a fault.
    """
    if not (pq.is_file() or mf.is_file()):
        return None
    if not (pq.is_file() and mf.is_file()):
        kept, gone = (pq, mf) if pq.is_file() else (mf, pq)
        logger.warning("shard %s has no %s beside it; resampling it", kept, gone.name)
        return None
    try:
        found = json.loads(mf.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        logger.warning("unreadable manifest %s (%s); resampling its shard", mf, exc)
        return None
    if found != expected:
        logger.warning("shard %s was made with another config; resampling it", pq)
        return None
    try:
        df = pd.read_parquet(pq)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... for bad files
        logger.warning("corrupt shard %s (%s: %s); resampling it", pq, type(exc).__name__, exc)
        return None
    why = shard_problem(df, expected["problem_ids"], n)
    if why is not None:
        logger.warning("shard %s does not match its manifest %s: %s; resampling it", pq, mf.name, why)
        return None
    return _in_order(df, expected["problem_ids"])


@contextlib.contextmanager
def _shard_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed); log when it has to wait."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+b") as fh:  # one open file description per holder: flock then excludes
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for lock %s (another process is sampling this shard)", path)
            t0 = time.perf_counter()
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            logger.info("got lock %s after %.1f s", path, time.perf_counter() - t0)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def check_complete(table: pd.DataFrame, problem_ids: list[str], n: int) -> None:
    """Raise ``IncompleteCandidatesError`` unless ``table`` has every problem x ``n`` rows once."""
    why = shard_problem(table, problem_ids, n)
    if why is not None:
        raise IncompleteCandidatesError(
            f"candidates table is incomplete for {len(problem_ids)} problems x n={n}: {why}"
        )


def _sample_shard(sampler: Sampler, chunk: pd.DataFrame, params: SamplingParams,
                  progress: Any, answer_span: SpanFn | None = None, first_sample: int = 0) -> pd.DataFrame:
    """Sample one shard (samples ``first_sample .. first_sample + n - 1``) and return its rows."""
    seeds = [stable_seed(params.seed, pid) for pid in chunk["problem_id"]]
    ids = list(chunk["problem_id"])
    kwargs: dict[str, Any] = {"progress": progress}
    if first_sample:
        kwargs["first_sample"] = first_sample
    if answer_span is not None:
        kwargs["answer_span"] = lambda i, text: answer_span(ids[i], text)
    gens = sampler.generate(list(chunk["prompt"].astype(str)), params, seeds, **kwargs)
    rows = []
    for pid, seed, cands in zip(ids, seeds, gens):
        for j, g in enumerate(cands, start=first_sample):
            row = {
                "problem_id": pid, "sample_idx": j, "completion": g.text, "n_tokens": g.n_tokens,
                "finish_reason": g.finish_reason, "logprob_mean": g.logprob_mean, "seed": seed,
                "gen_seconds": g.seconds,
            }
            if g.record is not None:
                row |= {col: np.asarray(g.record[key]) for col, key in _RECORD_KEYS.items() if key in g.record}
            rows.append(row)
    recorded = bool(rows) and all(c in rows[0] for c in RECORD_COLUMNS)
    df = pd.DataFrame(rows, columns=CANDIDATE_COLUMNS + (RECORD_COLUMNS if recorded else []))
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
    answer_span: SpanFn | None = None,
) -> tuple[pd.DataFrame, SamplingStats]:
    """Sample ``params.n`` candidates for every row of ``problems`` (columns problem_id, prompt).

    Returns the candidates table (``CANDIDATE_COLUMNS``, ordered like ``problems`` then
    sample_idx) and the ``SamplingStats`` of the shards sampled by this call. ``run_key`` defaults
    to ``make_run_key(model_id, params, problems)``. Bad shards on disk are resampled (see the
    module docstring); ``IncompleteCandidatesError`` is raised if the final table still lacks a
    (problem, sample) pair or holds one twice. With a recording sampler the table also has
    ``RECORD_COLUMNS`` (``answer_span`` locates each answer for the recorded answer state).
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
    try:
        for s in range(n_shards):
            chunk = problems.iloc[s * shard_size:(s + 1) * shard_size]
            ids = [str(x) for x in chunk["problem_id"]]
            stem = out_dir / f"shard_{s:05d}"
            pq, mf = stem.with_suffix(".parquet"), stem.with_suffix(".json")
            expected = _manifest(run_key, params, ids, s, record=bool(getattr(sampler, "record", False)))
            with _shard_lock(stem.with_suffix(".lock")):
                # Checked under the lock: another process may have finished it while we waited.
                df = _load_shard(pq, mf, expected, params.n)
                if df is not None:
                    stats.problems_reused += len(chunk)
                else:
                    t0 = time.perf_counter()
                    df = _sample_shard(sampler, chunk, params, on_step, answer_span)
                    why = shard_problem(df, ids, params.n)
                    if why is not None:  # a sampler bug: never write (and later trust) such a shard
                        raise IncompleteCandidatesError(f"sampler {getattr(sampler, 'name', sampler)!r} "
                                                        f"returned a bad shard {s}: {why}")
                    stats.seconds += time.perf_counter() - t0
                    stats.tokens += int(df["n_tokens"].sum())
                    per_problem += df.groupby("problem_id", sort=False)["gen_seconds"].sum().tolist()
                    # The manifest is removed first and written last: a shard counts as done only once
                    # its manifest exists, so a crash between the two writes never pairs new rows
                    # with a stale manifest (or old rows with a new one).
                    mf.unlink(missing_ok=True)
                    _write_atomic(pq, lambda p: df.to_parquet(p, index=False))
                    _write_atomic(mf, lambda p: p.write_text(json.dumps(expected, indent=1)))
                    logger.info("shard %d/%d: %d problems in %.1f s", s + 1, n_shards, len(chunk),
                                time.perf_counter() - t0)
            tables.append(df)
            if bar is not None:
                bar.update(len(chunk))
    finally:  # also on errors, so a failed run does not leave a dangling bar
        if bar is not None:
            bar.close()

    stats.tokens_per_s = stats.tokens / stats.seconds if stats.seconds > 0 else 0.0
    if per_problem:
        stats.p50_seconds_per_problem = float(np.percentile(per_problem, 50))
        stats.p95_seconds_per_problem = float(np.percentile(per_problem, 95))
    logger.info("sampling %s: %s", run_key, stats.to_dict())
    result = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=CANDIDATE_COLUMNS)
    check_complete(result, [str(x) for x in problems["problem_id"]], params.n)
    return result, stats
