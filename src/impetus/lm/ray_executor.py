"""Sampling shards on a Ray cluster (``sampling.executor: ray``).

One actor per worker slot (``cpus_per_worker`` CPUs, ``gpus_per_worker`` GPUs, spread over the
nodes) loads the base model once on its node's device and samples whole shards; each shard comes
back as an Arrow table through Ray's object store, so workers need no shared file system and the
driver (:func:`impetus.lm.runner.sample_problems`) checks and writes every shard itself.

Faults. An actor that dies mid-shard (its process killed, its node removed) fails that shard's
call; the driver hands the shard to the next free actor (at most ``max_retries`` times per shard)
while Ray restarts the dead actor (``max_restarts``), which rejoins once its model is loaded
again. An actor that Ray reports unavailable (``ActorUnavailableError``: it is restarting, e.g.
killed again inside its restart window) is asked again every ``RESTART_POLL_S``; only
``ActorDiedError`` (Ray gave up on it) drops it from the pool. A retried shard gives the same rows
(per-row seeds), and the driver writes each shard once, so nothing is lost or duplicated. An interrupted driver (Ctrl-C, an error) kills its actors and
shuts down a Ray it started itself before the exception goes on; a driver killed outright leaves
its actors to Ray, which kills the actors of a dead owner.

Connection (``address``): empty = ``RAY_ADDRESS``, else the Ray last started on this machine with
``ray start``, else a new local Ray (a laptop); ``auto`` = an existing cluster only;
``ray://host:10001`` = a remote cluster through Ray Client. ``metadata`` (e.g. the MLflow run id)
is attached to the Ray job, so the dashboard's job and the tracking run name each other.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from impetus.lm.executors import SamplerSpec, ShardTask, SpanFn, TokensFn, sample_shard
from impetus.lm.sampler import SamplingParams

logger = logging.getLogger(__name__)

#: Seconds between asks to an actor that Ray reports unavailable (restarting).
RESTART_POLL_S = 1.0


@dataclass(frozen=True)
class RayConfig:
    """How to reach Ray and size the actors (values from ``parameters_sampling.yml``'s ``ray`` block)."""

    address: str
    workers: int | None
    cpus_per_worker: float
    gpus_per_worker: float
    device: str | None
    max_retries: int
    dashboard: bool


class _Worker:
    """A Ray actor: the sampler built once, then one shard per call."""

    def __init__(self, spec: SamplerSpec, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)  # what Ray granted, not the node's core count
        self.sampler = spec.build()

    def info(self) -> dict[str, Any]:
        import ray

        return {"pid": os.getpid(), "host": socket.gethostname(), "node": ray.get_runtime_context().get_node_id()}

    def sample(self, task: ShardTask, params: SamplingParams, answer_span: SpanFn | None) -> pa.Table:
        return sample_shard(self.sampler, task, params, answer_span)


class RayExecutor:
    """Shards on Ray actors; see the module docstring. ``close()`` kills the actors."""

    name = "ray"

    def __init__(self, spec: SamplerSpec, config: RayConfig, metadata: dict[str, str] | None = None) -> None:
        self.spec, self.config, self.record = spec, config, spec.record
        self.metadata = dict(metadata or {})
        self._started_ray = _connect(config, self.metadata)
        self._actors: list[Any] = []
        self._seen: set[int] = set()  # actor pids already announced

    # -- actors -------------------------------------------------------------------------------------
    def _device(self) -> str | None:
        if self.config.device:
            return self.config.device
        return "cuda" if self.config.gpus_per_worker > 0 else None  # Ray sets CUDA_VISIBLE_DEVICES

    def n_workers(self) -> int:
        """``workers``, or as many as the cluster's CPUs (GPUs when workers take GPUs) allow."""
        import ray

        if self.config.workers:
            return self.config.workers
        res = ray.cluster_resources()
        key, per = ("GPU", self.config.gpus_per_worker) if self.config.gpus_per_worker > 0 else \
            ("CPU", self.config.cpus_per_worker)
        return max(1, int(res.get(key, 1) // per))

    def _start_actors(self) -> None:
        import ray

        if self._actors:
            return
        if not ray.is_initialized():  # closed after an interrupt, or shut down by someone else
            self._started_ray = _connect(self.config, self.metadata)
        cfg = self.config
        spec = SamplerSpec(self.spec.base_lm, self.spec.backend, self.spec.record, self._device(), self.spec.kwargs)
        cls = ray.remote(_Worker).options(
            num_cpus=cfg.cpus_per_worker, num_gpus=cfg.gpus_per_worker, max_restarts=cfg.max_retries,
            scheduling_strategy="SPREAD",  # one per node first: each node's cores work
        )
        threads = max(1, int(cfg.cpus_per_worker))
        self._actors = [cls.remote(spec, threads) for _ in range(self.n_workers())]
        logger.info("Ray: %d sampler actors (%s CPU, %s GPU each, %d torch threads)", len(self._actors),
                    cfg.cpus_per_worker, cfg.gpus_per_worker, threads)

    def worker_info(self) -> list[dict[str, Any]]:
        """pid, host and node of each live actor (waits until they are up, restarts included)."""
        self._start_actors()
        return [_ask_until_up(a) for a in self._actors]

    # -- the executor contract ------------------------------------------------------------------------
    def run(self, tasks: Iterator[ShardTask], params: SamplingParams, answer_span: SpanFn | None,
            on_tokens: TokensFn) -> Iterator[tuple[ShardTask, pa.Table]]:
        import ray

        self._start_actors()
        try:
            yield from _Dispatch(self._actors, ray.put(answer_span), params, self.config.max_retries,
                                 self._seen).run(tasks, on_tokens)
        except BaseException:
            self.close()  # Ctrl-C or an error: leave no actor (nor a Ray we started) behind
            raise

    def describe(self) -> dict[str, str]:
        import ray

        ctx = ray.get_runtime_context()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        out = {"ray.job_id": str(ctx.get_job_id()), "ray.nodes": str(len(nodes)),
               "ray.workers": str(len(self._actors) or self.n_workers())}
        url = _dashboard_url()
        if url:
            out["ray.dashboard"] = url
        return out

    def close(self) -> None:
        import ray

        for actor in self._actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception as exc:  # noqa: BLE001 - a dead actor or a gone cluster: nothing left to kill
                logger.debug("ray.kill: %s", exc)
        self._actors = []
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
            self._started_ray = False


class _Dispatch:
    """One ``run``: keeps every live actor busy with one shard, resubmits shards of dead actors."""

    def __init__(self, actors: list[Any], span_ref: Any, params: SamplingParams, max_retries: int,
                 seen: set[int]) -> None:
        self.params, self.span_ref, self.max_retries, self.seen = params, span_ref, max_retries, seen
        self.idle: deque[Any] = deque()
        self.waking = {a.info.remote(): a for a in actors}  # an actor is free once it answers
        self.restarting: list[tuple[float, Any]] = []  # (when to ask again, actor) while Ray restarts it
        self.inflight: dict[Any, tuple[ShardTask, Any]] = {}
        self.retry: deque[ShardTask] = deque()
        self.attempts: dict[int, int] = {}
        self.last_error: BaseException | None = None  # why the last actor was dropped

    def _next_task(self, tasks: Iterator[ShardTask]) -> ShardTask | None:
        if self.retry:
            return self.retry.popleft()
        return next(tasks, None)

    def _fill(self, tasks: Iterator[ShardTask]) -> bool:
        """Give each idle actor a shard; False once the driver's iterator is exhausted."""
        more = True
        while self.idle:
            task = self._next_task(tasks)
            if task is None:
                more = False
                break
            actor = self.idle.popleft()
            self.inflight[actor.sample.remote(task, self.params, self.span_ref)] = (task, actor)
        return more

    def run(self, tasks: Iterator[ShardTask], on_tokens: TokensFn) -> Iterator[tuple[ShardTask, pa.Table]]:
        with _interrupts() as hit:
            yield from self._loop(tasks, on_tokens, hit)

    def _loop(self, tasks: Iterator[ShardTask], on_tokens: TokensFn,
              hit: list[bool]) -> Iterator[tuple[ShardTask, pa.Table]]:
        import ray

        more = True
        while True:
            if more or self.retry:
                more = self._fill(tasks) and more
            if not self.inflight and not self.retry and not more:
                return
            self._ask_restarting()
            if not self.inflight and not self.waking and not self.idle and not self.restarting:
                raise RuntimeError("every Ray sampler actor is dead and none is restarting; shards left: "
                                   f"{sorted(t.index for t in self.retry) or 'not started'}; last error: "
                                   f"{self.last_error}") from self.last_error
            refs = list(self.inflight) + list(self.waking)
            if not refs:  # only restarting actors: wait for the next time to ask them
                time.sleep(RESTART_POLL_S)
                continue
            # A short timeout keeps the driver responsive to Ctrl-C while it waits.
            ready, _ = ray.wait(refs, num_returns=1, timeout=1.0)
            if hit[0]:  # a Ctrl-C whose KeyboardInterrupt Ray's wait swallowed
                raise KeyboardInterrupt
            for ref in ready:
                if ref in self.waking:
                    self._woke(ref)
                else:
                    result = self._finished(ref)
                    if result is not None:
                        on_tokens(int(pc.sum(result[1]["n_tokens"]).as_py() or 0))
                        yield result

    def _woke(self, ref: Any) -> None:
        import ray

        actor = self.waking.pop(ref)
        try:
            info = ray.get(ref)
        except ray.exceptions.ActorUnavailableError:
            # Raised while Ray restarts the actor (e.g. a second kill inside the restart window):
            # not final. Ask again later; Ray raises ActorDiedError once it gives up on the actor.
            logger.info("Ray sampler actor unavailable (restarting); asking again in %.0f s", RESTART_POLL_S)
            self.restarting.append((time.monotonic() + RESTART_POLL_S, actor))
            return
        except ray.exceptions.RayActorError as exc:  # could not (re)start, e.g. the model failed to load
            logger.warning("Ray sampler actor is gone for good: %s", exc)
            self.last_error = exc
            return
        if info["pid"] not in self.seen:  # new, or restarted after a fault (a new process)
            self.seen.add(info["pid"])
            logger.info("Ray sampler actor ready: pid %s on %s", info["pid"], info["host"])
        self.idle.append(actor)

    def _ask_restarting(self) -> None:
        """Ping again the restarting actors whose wait is over (they rejoin once they answer)."""
        now, later = time.monotonic(), []
        for due, actor in self.restarting:
            if due <= now:
                self.waking[actor.info.remote()] = actor
            else:
                later.append((due, actor))
        self.restarting = later

    def _finished(self, ref: Any) -> tuple[ShardTask, pa.Table] | None:
        import ray

        task, actor = self.inflight.pop(ref)
        try:
            table = ray.get(ref)
        except ray.exceptions.RayActorError as exc:  # the worker died: the shard goes to another one
            n = self.attempts[task.index] = self.attempts.get(task.index, 0) + 1
            if n > self.max_retries:
                raise RuntimeError(f"shard {task.index} lost its Ray worker {n} times (ray.max_retries="
                                   f"{self.max_retries}); last error: {exc}") from exc
            logger.warning("Ray worker died during shard %d (%s); resubmitting it (attempt %d of %d)",
                           task.index, type(exc).__name__, n + 1, self.max_retries + 1)
            self.retry.append(task)
            self.waking[actor.info.remote()] = actor  # back once Ray has restarted it
            return None
        self.idle.append(actor)
        return task, table


def _ask_until_up(actor: Any) -> dict[str, Any]:
    """The actor's ``info``, asking again while Ray restarts it (``ActorUnavailableError``)."""
    import ray

    while True:
        try:
            return ray.get(actor.info.remote())
        except ray.exceptions.ActorUnavailableError:
            time.sleep(RESTART_POLL_S)


@contextlib.contextmanager
def _interrupts() -> Iterator[list[bool]]:
    """Remember a Ctrl-C (SIGINT) while Ray is waited on.

    Ray's blocking calls check for signals themselves and can drop the KeyboardInterrupt the
    handler raises (seen: an interrupted driver that went on to finish with exit 0), so the handler
    also sets a flag the dispatch loop checks. Main thread only (where Python handles signals)."""
    hit = [False]
    if threading.current_thread() is not threading.main_thread():
        yield hit
        return
    # None: a handler installed outside Python, which cannot be restored; Python's default then.
    previous = signal.getsignal(signal.SIGINT) or signal.default_int_handler

    def handler(signum: int, frame: Any) -> None:
        hit[0] = True
        if callable(previous):
            previous(signum, frame)  # Python's default raises KeyboardInterrupt
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield hit
    finally:
        signal.signal(signal.SIGINT, previous)


def _connect(config: RayConfig, metadata: dict[str, str]) -> bool:
    """Connect to (or start) Ray unless this process already is; True when this call started it."""
    import ray
    from ray.job_config import JobConfig

    if ray.is_initialized():
        return False
    address = config.address or None
    local = address is None and not os.environ.get("RAY_ADDRESS")
    # Ray starts workers at niceness 15, so its own daemons and this driver preempt the samplers;
    # measured (docs/benchmarks.md) that cost 11% on one node. Samplers are the work: run them at 0.
    os.environ.setdefault("RAY_worker_niceness", "0")  # read by a raylet this process starts
    ctx = ray.init(address=address, include_dashboard=config.dashboard if local else None,
                   job_config=JobConfig(metadata={k: str(v) for k, v in metadata.items()}),
                   log_to_driver=True, configure_logging=False)
    logger.info("Ray: connected to %s (dashboard: %s)", ctx.address_info.get("address") or address,
                _dashboard_url() or "off")
    # A Ray this process started (none was found to join) is shut down by close(); ray.init
    # also registers its own shutdown at exit.
    node = getattr(ray._private.worker, "_global_node", None)  # None through Ray Client
    return local and bool(getattr(node, "head", False))


def _dashboard_url() -> str | None:
    import ray

    try:
        url = ray._private.worker.get_dashboard_url()
    except Exception:  # noqa: BLE001 - no dashboard (plain `ray`, or include_dashboard=False)
        return None
    return f"http://{url}" if url and not url.startswith("http") else (url or None)
