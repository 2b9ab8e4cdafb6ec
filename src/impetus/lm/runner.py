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
the sum over the problem's rows. ``seconds`` of the stats is the wall time from the first shard
handed to a worker to the last one written, so ``tokens_per_s`` is the throughput of all workers.

Executors (:mod:`impetus.lm.executors`): the shards are sampled in this process (``local``) or by
Ray actors (``ray``); either way this module alone decides reuse, checks what comes back and
writes the files, so the guarantees above do not depend on who sampled a shard.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from impetus.energy.recorded import RECORD_COLUMNS  # the one record schema
from impetus.lm.donors import DonorPool
from impetus.lm.executors import (
    CANDIDATE_COLUMNS, LocalExecutor, ShardExecutor, ShardTask, SpanFn, StopRule, as_frame, tasks_of,
)
from impetus.lm.sampler import Sampler, SamplingParams
from impetus.lm.shards import _in_order, _load_shard, _shard_lock, _write_atomic, shard_problem

logger = logging.getLogger(__name__)

__all__ = ["CANDIDATE_COLUMNS", "RECORD_COLUMNS", "SpanFn", "IncompleteCandidatesError", "SamplingStats",
           "check_complete", "make_run_key", "sample_problems", "shard_problem", "stable_seed"]


class IncompleteCandidatesError(RuntimeError):
    """The candidates table does not hold every problem x ``n`` samples exactly once."""


@dataclass
class SamplingStats:
    """Throughput and latency of one ``sample_problems`` call (only shards sampled in this call)."""

    problems: int = 0
    problems_reused: int = 0  # shards on disk, and those assembled from other runs' rows (next field)
    problems_from_other_runs: int = 0  # scored choices found by item key (:mod:`impetus.lm.donors`)
    tokens: int = 0
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    samples_per_problem: float = 0.0  # rows per problem in the whole table (below N with adaptive N)
    p50_seconds_per_problem: float = 0.0
    p95_seconds_per_problem: float = 0.0

    def to_dict(self) -> dict[str, float]:
        """Flat dict for MLflow metrics."""
        return {k: float(v) for k, v in asdict(self).items()}


def stable_seed(seed: int, problem_id: Any) -> int:
    """Per-problem seed from the run seed and the problem id (no Python ``hash``: it is salted)."""
    h = hashlib.blake2b(f"{int(seed)}|{problem_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 31) - 1)


def make_run_key(model_id: str, params: SamplingParams, prompts: pd.DataFrame | list[str],
                 adaptive: Mapping[str, Any] | None = None) -> str:
    """Hash of model id + result-relevant params + (problem_id, prompt) pairs, as a folder name
    (and each problem's choices, when they are the candidates; and the adaptive-N rule, when on:
    its shards hold fewer rows, so they must never be mistaken for a full-N run's)."""
    h = hashlib.sha256()
    h.update(str(model_id).encode())
    h.update(json.dumps(params.result_dict(), sort_keys=True).encode())
    if adaptive:
        h.update(b"\x03" + json.dumps(dict(adaptive), sort_keys=True).encode())
    if isinstance(prompts, pd.DataFrame):
        items = zip(prompts["problem_id"].astype(str), prompts["prompt"].astype(str))
    else:
        items = ((str(i), str(p)) for i, p in enumerate(prompts))
    for pid, prompt in items:
        h.update(b"\x00" + pid.encode() + b"\x01" + prompt.encode())
    if isinstance(prompts, pd.DataFrame) and "choices" in prompts.columns:
        for choices in prompts["choices"]:
            h.update(b"\x02" + json.dumps([str(c) for c in choices]).encode())
    return h.hexdigest()[:16]


def _manifest(run_key: str, params: SamplingParams, problem_ids: list[str], shard: int,
              record: bool = False, keys: Mapping[str, str] | None = None,
              adaptive: Mapping[str, Any] | None = None) -> dict[str, Any]:
    found = {"run_key": run_key, "shard": shard, "params": params.result_dict(),
             "params_hash": params.digest(), "problem_ids": problem_ids, "record": record}
    found |= {"adaptive": dict(adaptive)} if adaptive else {}
    return found | ({"item_keys": [keys[p] for p in problem_ids]} if keys else {})


def check_complete(table: pd.DataFrame, problem_ids: list[str], n: int | Mapping[str, int]) -> None:
    """Raise ``IncompleteCandidatesError`` unless ``table`` has every problem x ``n`` rows once."""
    why = shard_problem(table, problem_ids, n)
    if why is not None:
        raise IncompleteCandidatesError(
            f"candidates table is incomplete for {len(problem_ids)} problems x n={n}: {why}"
        )


def sample_problems(
    sampler: Sampler | None,
    problems: pd.DataFrame,
    params: SamplingParams,
    shard_dir: str | Path,
    shard_size: int = 16,
    run_key: str | None = None,
    progress: bool = True,
    model_id: str = "model",
    answer_span: SpanFn | None = None,
    executor: ShardExecutor | None = None,
    item_keys: Sequence[str] | None = None,
    reuse_dir: str | Path | None = None,
    stop: StopRule | None = None,
) -> tuple[pd.DataFrame, SamplingStats]:
    """Sample ``params.n`` candidates for every row of ``problems`` (columns problem_id, prompt).

    Returns the candidates table (``CANDIDATE_COLUMNS``, ordered like ``problems`` then
    sample_idx) and the ``SamplingStats`` of the shards sampled by this call. ``run_key`` defaults
    to ``make_run_key(model_id, params, problems)``. Bad shards on disk are resampled (see the
    module docstring); ``IncompleteCandidatesError`` is raised if the final table still lacks a
    (problem, sample) pair or holds one twice. With a recording sampler the table also has
    ``RECORD_COLUMNS`` (``answer_span`` locates each answer for the recorded answer state).
    ``executor`` samples the shards (:mod:`impetus.lm.executors`; default: ``sampler`` in this
    process); whatever samples them, this function alone reuses, checks and writes shard files.
    ``item_keys`` (one per problem, :func:`impetus.lm.donors.item_keys`; scored choices only) go in
    the manifests and let a missing shard be assembled from other runs' rows of the same items
    found under ``reuse_dir`` (default ``shard_dir``). ``stop`` (adaptive N online,
    :class:`impetus.selection.online.WaveStop`) samples each shard in waves and stops settled
    problems: a problem's rows are then the first rows of the full-N run, as many as the rule asked
    for, which the checks replay; the rule is part of the run key and the manifests.
    """
    _check_problems(problems, shard_size)
    adaptive = stop.describe() if stop is not None else None
    run_key = run_key or make_run_key(model_id, params, problems, adaptive)
    out_dir = Path(shard_dir) / run_key
    out_dir.mkdir(parents=True, exist_ok=True)
    problems = problems.reset_index(drop=True)
    executor = executor or LocalExecutor(sampler)
    record = bool(executor.record)
    all_tasks = tasks_of(problems, shard_size, (stable_seed(params.seed, p) for p in problems["problem_id"]), stop)
    run = _Run(out_dir, run_key, params, len(all_tasks), record, _bar(progress, len(problems), run_key),
               source=f"sampler {getattr(sampler, 'name', sampler)!r}" if sampler is not None else executor.name)
    run.adaptive = adaptive
    if item_keys is not None:
        run.keys = dict(zip((str(p) for p in problems["problem_id"]), item_keys, strict=True))
        run.donors = DonorPool(Path(reuse_dir or shard_dir), out_dir)
    run.stats.problems = len(problems)
    try:
        with contextlib.ExitStack() as held:
            for task, table in executor.run(run.pending(all_tasks, held), params, answer_span, run.on_tokens):
                run.write(task, as_frame(table))
    finally:  # also on errors, so a failed run does not leave a dangling bar
        run.close()
    result = run.result(all_tasks)
    counts = [t.rows_per_problem(params.n, run.tables.get(t.index)) for t in all_tasks]
    check_complete(result, [str(x) for x in problems["problem_id"]],
                   params.n if not counts or isinstance(counts[0], int) else {k: v for c in counts for k, v in c.items()})
    run.stats.samples_per_problem = len(result) / max(len(problems), 1)
    logger.info("sampling %s: %s", run_key, run.stats.to_dict())
    return result, run.stats


def _check_problems(problems: pd.DataFrame, shard_size: int) -> None:
    missing = {"problem_id", "prompt"} - set(problems.columns)
    if missing:
        raise ValueError(f"problems table lacks columns {sorted(missing)}")
    if problems["problem_id"].duplicated().any():
        dup = problems.loc[problems["problem_id"].duplicated(), "problem_id"].iloc[0]
        raise ValueError(f"duplicate problem_id {dup!r}: ids must be unique for seeding and resume")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")


def _bar(progress: bool, total: int, run_key: str) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"sampling {run_key[:8]}", unit="problem")


class _Run:
    """The driver's side of one ``sample_problems`` call: shard reuse, locks, writes and stats."""

    def __init__(self, out_dir: Path, run_key: str, params: SamplingParams, n_shards: int, record: bool,
                 bar: Any, source: str = "sampler") -> None:
        self.source = source  # who samples, for errors
        self.out_dir, self.run_key, self.params, self.n_shards = out_dir, run_key, params, n_shards
        self.record, self.bar = record, bar
        self.stats, self.tables = SamplingStats(), {}
        self.locks: dict[int, contextlib.ExitStack] = {}
        self.per_problem: list[float] = []
        self.tokens, self.t0, self.t_first = 0, time.perf_counter(), None
        self.keys: dict[str, str] | None = None  # item key per problem (scored choices)
        self.adaptive: dict[str, Any] | None = None  # the adaptive-N rule (its manifest entry)
        self.donors: DonorPool | None = None

    def _paths(self, s: int) -> tuple[Path, Path, Path]:
        stem = self.out_dir / f"shard_{s:05d}"
        return stem.with_suffix(".parquet"), stem.with_suffix(".json"), stem.with_suffix(".lock")

    def expected(self, task: ShardTask) -> dict[str, Any]:
        return _manifest(self.run_key, self.params, task.problem_ids, task.index, record=self.record, keys=self.keys,
                         adaptive=self.adaptive)

    def counts(self, task: ShardTask) -> Any:
        """What a shard of ``task`` must hold per problem, given its rows (a function of them)."""
        return lambda df: task.rows_per_problem(self.params.n, df)

    def pending(self, tasks: list[ShardTask], held: contextlib.ExitStack) -> Iterator[ShardTask]:
        """The tasks whose shard is not on disk, each locked when handed out (reused ones skipped).

        Pulled lazily by the executor, so a shard is locked only once a worker is free for it and
        another process that shares the folder waits for that shard alone."""
        for task in tasks:
            pq, mf, lock = self._paths(task.index)
            stack = held.enter_context(contextlib.ExitStack())
            stack.enter_context(_shard_lock(lock))
            # Checked under the lock: another process may have finished it while we waited.
            df = _load_shard(pq, mf, self.expected(task), self.counts(task))
            if df is None and self.donors is not None:
                df = self._adopt(task)
            if df is not None:
                stack.close()
                self.stats.problems_reused += len(task.problem_ids)
                self.tables[task.index] = df
                self._advance(len(task.problem_ids))
                continue
            self.locks[task.index] = stack
            if self.t_first is None:
                self.t_first = time.perf_counter()
            yield task

    def _adopt(self, task: ShardTask) -> pd.DataFrame | None:
        """The shard assembled from other runs' rows of the same items, checked and written as this
        run's own; None (score it) unless every problem has a donor and the rows pass the checks."""
        df = self.donors.assemble(task.problem_ids, [self.keys[p] for p in task.problem_ids])
        if df is None:
            return None
        why = shard_problem(df, task.problem_ids, task.rows_per_problem(self.params.n, df))
        if why is not None:
            logger.warning("shard %d: other runs' rows do not make a whole shard (%s); scoring it", task.index, why)
            return None
        self._save(task, df)
        self.stats.problems_from_other_runs += len(task.problem_ids)
        logger.info("shard %d/%d: %d problems' rows taken from other runs", task.index + 1, self.n_shards,
                    len(task.problem_ids))
        return _in_order(df, task.problem_ids)

    def _save(self, task: ShardTask, df: pd.DataFrame) -> None:
        pq, mf, _ = self._paths(task.index)
        # The manifest is removed first and written last: a shard counts as done only once its
        # manifest exists, so a crash between the two writes never pairs new rows with a stale
        # manifest (or old rows with a new one).
        mf.unlink(missing_ok=True)
        _write_atomic(pq, lambda p: df.to_parquet(p, index=False))
        _write_atomic(mf, lambda p: p.write_text(json.dumps(self.expected(task), indent=1)))

    def on_tokens(self, new_tokens: int) -> None:
        self.tokens += new_tokens
        if self.bar is not None:
            dt = time.perf_counter() - (self.t_first or self.t0)
            self.bar.set_postfix(tok_s=f"{self.tokens / max(dt, 1e-9):.0f}", refresh=False)

    def write(self, task: ShardTask, df: pd.DataFrame) -> None:
        """Check a sampled shard, then write it (parquet, then its manifest) and release its lock."""
        s = task.index
        why = shard_problem(df, task.problem_ids, task.rows_per_problem(self.params.n, df))
        if why is not None:  # a sampler bug: never write (and later trust) such a shard
            raise IncompleteCandidatesError(f"{self.source} returned a bad shard {s}: {why}")
        self._save(task, df)
        self.locks.pop(s).close()
        self.tables[s] = _in_order(df, task.problem_ids)
        self.stats.tokens += int(df["n_tokens"].sum())
        self.stats.seconds = time.perf_counter() - (self.t_first or self.t0)
        self.per_problem += df.groupby("problem_id", sort=False)["gen_seconds"].sum().tolist()
        logger.info("shard %d/%d: %d problems, %.1f s since sampling began", s + 1, self.n_shards,
                    len(task.problem_ids), self.stats.seconds)
        self._advance(len(task.problem_ids))

    def _advance(self, k: int) -> None:
        if self.bar is not None:
            self.bar.update(k)
            if self.stats.seconds > 0:  # tokens/s over every worker, from the finished shards
                self.bar.set_postfix(tok_s=f"{self.stats.tokens / self.stats.seconds:.0f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        st = self.stats
        st.tokens_per_s = st.tokens / st.seconds if st.seconds > 0 else 0.0
        if self.per_problem:
            st.p50_seconds_per_problem = float(np.percentile(self.per_problem, 50))
            st.p95_seconds_per_problem = float(np.percentile(self.per_problem, 95))

    def result(self, tasks: list[ShardTask]) -> pd.DataFrame:
        tables = [self.tables[t.index] for t in tasks if t.index in self.tables]
        return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=CANDIDATE_COLUMNS)
