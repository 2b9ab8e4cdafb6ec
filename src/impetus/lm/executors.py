"""Where sampling shards are sampled: in this process (``local``) or on Ray actors (``ray``).

The driver (:func:`impetus.lm.runner.sample_problems`) owns everything that makes a run safe to
resume: which shards are reused, the checks against each manifest, the atomic shard writes and the
locks. An executor only turns :class:`ShardTask` s into Arrow tables of candidate rows:

- it pulls tasks from the driver's iterator when it has a free worker (the driver locks a shard
  when it hands it out, so a second process waits for that shard only);
- it yields ``(task, table)`` as shards finish, in any order;
- the rows of a task depend only on the task (per-row seeds, :func:`impetus.lm.sampler.row_seed`),
  so any worker, or a retry on another worker, gives the same table.

Executors are data (:data:`EXECUTORS`, name -> import path): a new one is one entry.
:class:`SamplerSpec` says how to build the sampler anywhere, so a worker on another machine
loads the model itself; :class:`LocalExecutor` uses a sampler the caller already built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from impetus.energy.recorded import RECORD_COLUMNS, RECORD_KEYS, layer_columns
from impetus.lm.sampler import ChoiceScorer, Sampler, SamplingParams, get_sampler

CANDIDATE_COLUMNS = [
    "problem_id", "sample_idx", "completion", "n_tokens", "finish_reason", "logprob_mean", "seed", "gen_seconds",
]

SpanFn = Callable[[str, str], "tuple[int, int] | None"]
"""``span(problem_id, completion) -> (start, end)`` character span of the answer, or None."""

TokensFn = Callable[[int], None]
"""``on_tokens(new_tokens)``: progress of the shards in flight (for the tokens/s display)."""


class StopRule(Protocol):
    """Adaptive N online (:class:`impetus.selection.online.WaveStop`): sample ``wave`` rows per
    problem at a time and stop a problem once the rule says its answer is settled."""

    wave: int

    def stopped(self, rows: pd.DataFrame, n_max: int, k: int) -> set[str]:
        """The problems of ``rows`` (each holding its first ``k`` rows) that get no more samples."""
        ...

    def counts(self, rows: pd.DataFrame, problem_ids: list[str], n_max: int) -> dict[str, int]:
        """How many rows each problem must have, replayed from the rows it has (the driver's check)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What identifies the rule (run key and manifests)."""
        ...


@dataclass(frozen=True)
class ShardTask:
    """One shard to sample: its index in the run, and its problems (ids, prompts, seeds) in order."""

    index: int
    problem_ids: list[str]
    prompts: list[str]
    seeds: list[int]
    choices: list[list[str]] | None = None  # scored choices per problem (``candidates: choices``), else sampled
    stop: StopRule | None = None  # adaptive N: sample in waves and stop settled problems

    def rows_per_problem(self, n: int, rows: pd.DataFrame | None = None) -> int | dict[str, int]:
        """How many rows each problem gets: ``n`` samples, one per choice, or (adaptive N) what the
        stopping rule replayed on ``rows``, the shard's rows, asks for."""
        if self.stop is not None:
            if rows is None:
                raise ValueError("an adaptive shard's row counts follow from its rows; pass them")
            return self.stop.counts(rows, self.problem_ids, n)
        return n if self.choices is None else {p: len(c) for p, c in zip(self.problem_ids, self.choices)}


class ShardExecutor(Protocol):
    """Samples shards; see the module docstring for the contract."""

    name: str
    record: bool  # whether rows carry RECORD_COLUMNS (part of every shard's manifest)

    def run(self, tasks: Iterator[ShardTask], params: SamplingParams, answer_span: SpanFn | None,
            on_tokens: TokensFn) -> Iterator[tuple[ShardTask, pa.Table]]:
        """Sample every task pulled from ``tasks``; yield each with its rows as they finish."""
        ...

    def describe(self) -> dict[str, str]:
        """What to tag the tracking run with (e.g. the Ray job id and dashboard); may be empty."""
        ...

    def close(self) -> None:
        """Release the workers (idempotent)."""
        ...


@dataclass(frozen=True)
class SamplerSpec:
    """How to build the sampler in any process: the ``base_lm`` record (local folder, name, dtype,
    trust and pickle flags), the backend registry key and whether it records.

    ``device`` overrides the record's device (a Ray worker on a GPU node of a CPU-only driver).
    A worker that does not have ``base_lm["path"]`` resolves ``name_or_path`` itself (the same
    one-off conversion into its own cache), so no shared file system is needed.
    """

    base_lm: dict[str, Any]
    backend: str = "hf"
    record: bool = True
    device: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Sampler:
        """Load the model on this process's device and return the sampler."""
        from pathlib import Path

        from impetus.lm.loading import load_recorded, resolve_model

        lm = self.base_lm
        path = lm["path"]
        if not Path(path).exists():
            path = resolve_model(lm["name_or_path"], trust_remote_code=lm.get("trust_remote_code", False),
                                 allow_pickle=lm.get("allow_pickle", False))
        model, tok = load_recorded(lm, path=path, device=self.device)
        return get_sampler(self.backend, model, tok, record=self.record, **recorded_layers(lm), **self.kwargs)


def recorded_layers(base_lm: dict[str, Any]) -> dict[str, Any]:
    """The sampler keyword for the further layers a ``base_lm`` record asks to record
    (``model.hidden_layers``); none when it asks for none, so samplers without layers still fit."""
    return {"hidden_layers": tuple(base_lm["hidden_layers"])} if base_lm.get("hidden_layers") else {}


def sample_shard(sampler: Sampler, task: ShardTask, params: SamplingParams, answer_span: SpanFn | None = None,
                 progress: Any = None) -> pa.Table:
    """The candidate rows of one shard as an Arrow table (``CANDIDATE_COLUMNS`` [+ ``RECORD_COLUMNS``]).

    Arrow, not pandas, because it is what crosses process boundaries (Ray's object store) and what
    the shard file holds: every executor hands the driver the same types. With ``task.stop`` the
    problems are sampled in waves (:func:`_sample_waves`).
    """
    if task.choices is not None:
        if not isinstance(sampler, ChoiceScorer):
            raise TypeError(f"sampler {getattr(sampler, 'name', sampler)!r} cannot score choices "
                            "(it lacks ChoiceScorer.score_choices); use sampling.candidates=sampled")
        gens = sampler.score_choices(list(task.prompts), [list(c) for c in task.choices], progress=progress)
        return pa.Table.from_pandas(_frame(task.problem_ids, task.seeds, gens), preserve_index=False)
    if task.stop is not None:
        return pa.Table.from_pandas(_sample_waves(sampler, task, params, answer_span, progress), preserve_index=False)
    gens = _generate(sampler, task, list(range(len(task.problem_ids))), params, 0, answer_span, progress)
    return pa.Table.from_pandas(_frame(task.problem_ids, task.seeds, gens), preserve_index=False)


def _generate(sampler: Sampler, task: ShardTask, which: list[int], params: SamplingParams, first: int,
              answer_span: SpanFn | None, progress: Any, **kwargs: Any) -> list[list[Any]]:
    """Samples ``first .. first + params.n - 1`` of the task's problems ``which`` (indices)."""
    ids = [task.problem_ids[i] for i in which]
    kwargs["progress"] = progress
    if first:  # only waves past the first need it (samplers that only ever sample from 0 still fit)
        kwargs["first_sample"] = first
    if answer_span is not None:
        kwargs["answer_span"] = lambda i, text: answer_span(ids[i], text)
    return sampler.generate([task.prompts[i] for i in which], params, [task.seeds[i] for i in which], **kwargs)


def _sample_waves(sampler: Sampler, task: ShardTask, params: SamplingParams, answer_span: SpanFn | None,
                  progress: Any) -> pd.DataFrame:
    """Adaptive N: every open problem gets ``stop.wave`` more samples (the next sample indices, so
    the same seeds as a full-N run), then the rule closes the settled ones; at ``params.n`` all stop.
    (Letting a problem's next wave join the running batch inside one call was measured slower: each
    small refill merges the whole KV cache; docs/benchmarks.md.)"""
    stop, n = task.stop, params.n
    gens: list[list[Any]] = [[] for _ in task.problem_ids]
    open_, k = list(range(len(task.problem_ids))), 0
    while open_:
        m = min(int(stop.wave), n - k)
        for i, g in zip(open_, _generate(sampler, task, open_, replace(params, n=m), k, answer_span, progress)):
            gens[i] += g
        k += m
        rows = _frame([task.problem_ids[i] for i in open_], [task.seeds[i] for i in open_], [gens[i] for i in open_])
        done = stop.stopped(rows, n, k)
        open_ = [i for i in open_ if task.problem_ids[i] not in done]
    return _frame(task.problem_ids, task.seeds, gens)


def _frame(ids: list[str], seeds: list[int], gens: list[list[Any]]) -> pd.DataFrame:
    """Candidate rows of ``gens[i]``, problem ``ids[i]``'s generations in sample order."""
    rows = []
    for pid, seed, cands in zip(ids, seeds, gens):
        for j, g in enumerate(cands):
            row = {
                "problem_id": pid, "sample_idx": j, "completion": g.text, "n_tokens": g.n_tokens,
                "finish_reason": g.finish_reason, "logprob_mean": g.logprob_mean, "seed": seed,
                "gen_seconds": g.seconds,
            }
            if g.record is not None:
                row |= {col: np.asarray(g.record[key]) for col, key in RECORD_KEYS.items() if key in g.record}
                row |= {key: np.asarray(g.record[key]) for key in layer_columns(g.record)}
            rows.append(row)
    recorded = bool(rows) and all(c in rows[0] for c in RECORD_COLUMNS)
    layers = layer_columns(rows[0]) if recorded else []
    df = pd.DataFrame(rows, columns=CANDIDATE_COLUMNS + (RECORD_COLUMNS + layers if recorded else []))
    return df.astype({"problem_id": "str", "sample_idx": "int64", "n_tokens": "int64", "seed": "int64",
                      "logprob_mean": "float64", "gen_seconds": "float64"})


class LocalExecutor:
    """Shards one after another in this process, with a sampler the caller built."""

    name = "local"

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self.record = bool(getattr(sampler, "record", False))

    def run(self, tasks: Iterator[ShardTask], params: SamplingParams, answer_span: SpanFn | None,
            on_tokens: TokensFn) -> Iterator[tuple[ShardTask, pa.Table]]:
        def progress(new_tokens: int, _done: int) -> None:
            on_tokens(new_tokens)

        for task in tasks:
            yield task, sample_shard(self.sampler, task, params, answer_span, progress)

    def describe(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        pass


#: Executor registry: ``sampling.executor`` -> import path of its class (imported on use, so the
#: local path never imports Ray).
EXECUTORS: dict[str, str] = {
    "local": "impetus.lm.executors:LocalExecutor",
    "ray": "impetus.lm.ray_executor:RayExecutor",
}


def executor_class(name: str) -> type:
    """The executor class registered as ``name``; ``KeyError`` names the known ones."""
    if name not in EXECUTORS:
        raise KeyError(f"unknown sampling executor {name!r}; known: {sorted(EXECUTORS)}")
    module, _, attr = EXECUTORS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def as_frame(table: pa.Table) -> pd.DataFrame:
    """A shard's Arrow table as the pandas frame the runner returns (same types as a reused shard)."""
    return table.to_pandas()


def tasks_of(problems: pd.DataFrame, shard_size: int, seeds: Iterable[int],
             stop: StopRule | None = None) -> list[ShardTask]:
    """The shards of a problems table (``problem_id``, ``prompt``), ``shard_size`` problems each
    (``stop``: sampled in waves, adaptive N)."""
    ids = [str(x) for x in problems["problem_id"]]
    prompts = problems["prompt"].astype(str).tolist()
    seeds = list(seeds)
    choices = [[str(c) for c in cs] for cs in problems["choices"]] if "choices" in problems.columns else None
    return [ShardTask(s // shard_size, ids[s:s + shard_size], prompts[s:s + shard_size], seeds[s:s + shard_size],
                      None if choices is None else choices[s:s + shard_size], stop)
            for s in range(0, len(ids), shard_size)]
