"""Shard files: the checks a shard must pass, atomic writes, and the lock two processes share.

See :mod:`impetus.lm.runner` (its docstring) for what a shard is and when it is trusted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

try:  # POSIX only; elsewhere shards are not locked (one run per folder, as before)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

import numpy as np
import pandas as pd

from impetus.lm.executors import CANDIDATE_COLUMNS

logger = logging.getLogger("impetus.lm.runner")  # the runner's channel: these are its messages


def _write_atomic(path: Path, write: Any) -> None:
    """Write via ``write(tmp_path)`` then rename; a crash leaves only a stray ``.tmp`` file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def shard_problem(df: pd.DataFrame, problem_ids: list[str], n: int | Mapping[str, int]) -> str | None:
    """Why ``df`` is not a complete shard for ``problem_ids`` x ``n`` samples, or None if it is.

    Checks: every ``CANDIDATE_COLUMNS`` column present; the set of problem ids equal to
    ``problem_ids``; ``len(problem_ids) * n`` rows; sample_idx in 0..n-1; no duplicate
    (problem_id, sample_idx). Together these mean each problem has each sample exactly once.
    ``n`` may also map each problem to its own count (scored choices: one row per choice).
    """
    if isinstance(n, Mapping):
        return _shard_problem_counts(df, problem_ids, n)
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


def _shard_problem_counts(df: pd.DataFrame, problem_ids: list[str], counts: Mapping[str, int]) -> str | None:
    """:func:`shard_problem` with a count per problem: the same checks, then each problem's rows
    must be its sample_idx 0..count-1 exactly once."""
    missing = [c for c in CANDIDATE_COLUMNS if c not in df.columns]
    if missing:
        return f"missing columns {missing}"
    found = df.groupby(df["problem_id"].astype(str))["sample_idx"].apply(lambda s: sorted(int(x) for x in s))
    for pid in problem_ids:
        want = list(range(int(counts[pid])))
        if found.get(pid) != want:
            return f"problem {pid!r} has sample_idx {found.get(pid)}, expected {want}"
    extra = sorted(set(found.index) - set(problem_ids))
    return f"problem ids differ from the manifest ({len(extra)} unexpected, e.g. {extra[:3]})" if extra else None


def _in_order(df: pd.DataFrame, problem_ids: list[str]) -> pd.DataFrame:
    """Rows sorted like ``problem_ids`` then by sample_idx (a valid shard in any row order)."""
    pos = {p: i for i, p in enumerate(problem_ids)}
    key = df["problem_id"].astype(str).map(pos) * (len(df) + 1) + df["sample_idx"].astype("int64")
    return df.iloc[np.argsort(key.to_numpy(), kind="stable")].reset_index(drop=True)


def _load_shard(pq: Path, mf: Path, expected: dict[str, Any],
                n: int | Mapping[str, int] | Callable[[pd.DataFrame], Any]) -> pd.DataFrame | None:
    """The shard's table if it exists, matches its manifest and passes ``shard_problem``; else None.
    ``n`` may be a function of the rows read (adaptive N: the stopping rule replayed on them).

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
    try:
        counts = n(df) if callable(n) else n
    except Exception as exc:  # noqa: BLE001 - rows the stopping rule cannot even read (missing columns, ...)
        logger.warning("shard %s: its rows cannot be replayed (%s: %s); resampling it", pq, type(exc).__name__, exc)
        return None
    why = shard_problem(df, expected["problem_ids"], counts)
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
