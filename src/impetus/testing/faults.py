"""Samplers that fail on purpose, for the executor fault tests (importable by Ray workers).

Each wraps the ``hf`` sampler and is named by its import path in ``sampling.backend`` (a Ray worker
imports it; a registration made in the test process would not reach it):

- ``impetus.testing.faults:kill_once`` SIGKILLs its own process after ``after_steps`` decoding
  steps, once per ``marker`` file across every process (the first to create it dies): a worker
  killed mid-shard;
- ``impetus.testing.faults:kill_twice`` does the same, and the process Ray restarts in its place
  SIGKILLs itself while it builds its sampler (``restart_delay`` seconds in), once per
  ``marker2``: a second ``kill -9`` inside the restart window;
- ``impetus.testing.faults:slow`` sleeps ``delay`` seconds per decoding step and touches
  ``<started_dir>/<pid>.<call>`` when a shard starts, so a test can act while a given worker is
  mid-shard.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from impetus.lm.sampler import SamplingParams, get_sampler


class _Wrapped:
    """Delegates to the ``hf`` sampler; subclasses hook each decoding step."""

    name = "faulty"

    def __init__(self, model: Any, tokenizer: Any, **kwargs: Any) -> None:
        self.inner = get_sampler("hf", model, tokenizer, **kwargs)
        self.record = getattr(self.inner, "record", False)
        self.calls = 0

    def on_start(self) -> None:
        """Called when a shard starts."""

    def on_step(self) -> None:
        """Called after every decoding step."""

    def generate(self, prompts: Any, params: SamplingParams, seeds: list[int], progress: Any = None,
                 **kwargs: Any) -> Any:
        self.calls += 1
        self.on_start()

        def step(new_tokens: int, done: int) -> None:
            self.on_step()
            if progress is not None:
                progress(new_tokens, done)

        return self.inner.generate(prompts, params, seeds, progress=step, **kwargs)


class _KillOnce(_Wrapped):
    def __init__(self, model: Any, tokenizer: Any, marker: str, after_steps: int = 2, **kwargs: Any) -> None:
        super().__init__(model, tokenizer, **kwargs)
        self.marker, self.after, self.steps = Path(marker), after_steps, 0

    def on_step(self) -> None:
        self.steps += 1
        if self.steps == self.after and _claim(self.marker):
            os.kill(os.getpid(), signal.SIGKILL)  # mid-shard, as `kill -9` would


def kill_twice(model: Any, tokenizer: Any, marker: str, marker2: str, restart_delay: float = 1.0,
               **kwargs: Any) -> _KillOnce:
    """Sampler factory: :func:`kill_once`, and the first process built after that kill dies while
    it starts (see the module docstring)."""
    if Path(marker).exists() and _claim(Path(marker2)):
        time.sleep(restart_delay)  # Ray now has the actor as restarting
        os.kill(os.getpid(), signal.SIGKILL)
    return _KillOnce(model, tokenizer, marker=marker, **kwargs)


class _Slow(_Wrapped):
    def __init__(self, model: Any, tokenizer: Any, delay: float, started_dir: str, **kwargs: Any) -> None:
        super().__init__(model, tokenizer, **kwargs)
        self.delay, self.started = delay, Path(started_dir)

    def on_start(self) -> None:
        self.started.mkdir(parents=True, exist_ok=True)
        (self.started / f"{os.getpid()}.{self.calls}").touch()

    def on_step(self) -> None:
        time.sleep(self.delay)


def _claim(marker: Path) -> bool:
    """Create ``marker`` atomically; True only for the one process that created it."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def kill_once(model: Any, tokenizer: Any, **kwargs: Any) -> _KillOnce:
    """Sampler factory: the ``hf`` sampler, whose process SIGKILLs itself once (see the module docstring)."""
    return _KillOnce(model, tokenizer, **kwargs)


def slow(model: Any, tokenizer: Any, **kwargs: Any) -> _Slow:
    """Sampler factory: the ``hf`` sampler, slowed and announcing each shard (see the module docstring)."""
    return _Slow(model, tokenizer, **kwargs)
