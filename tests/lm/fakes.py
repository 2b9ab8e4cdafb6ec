"""A cheap deterministic sampler for runner tests: no torch model, same output for same inputs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pandas as pd

from impetus.lm.sampler import Generation, SamplingParams

FINISH = ("stop", "eos", "length")
# Shared by test_runner_shards.py and its child process _lock_child.py.
PARAMS = SamplingParams(n=3, temperature=0.8, top_p=0.95, max_new_tokens=16, seed=5)
SHARD = 2


def problems_table(k: int = 6) -> pd.DataFrame:
    """``k`` problems p0.. with prompts Q0.. (3 shards of 2 with ``SHARD``)."""
    return pd.DataFrame({"problem_id": [f"p{i}" for i in range(k)], "prompt": [f"Q{i}" for i in range(k)]})


class FakeSampler:
    """Text depends only on (prompt, seed, sample_idx), like a real seeded sampler.

    ``delay`` seconds are slept per call (to make concurrent runs overlap); every call appends one
    line per prompt to ``log_file`` when given (a cross-process call counter).
    """

    name = "fake"

    def __init__(self, delay: float = 0.0, log_file: str | Path | None = None,
                 on_call: threading.Event | None = None) -> None:
        self.delay, self.log_file, self.on_call = delay, log_file, on_call
        self.calls: list[list[str]] = []

    def generate(self, prompts: list[str], params: SamplingParams, seeds: list[int], progress=None):
        self.calls.append(list(prompts))
        if self.log_file is not None:
            with open(self.log_file, "a") as fh:
                fh.writelines(f"{p}\n" for p in prompts)
        if self.on_call is not None:
            self.on_call.set()
        time.sleep(self.delay)
        out = []
        for prompt, seed in zip(prompts, seeds):
            row = []
            for j in range(params.n):
                text = f"{prompt} s{seed % 1000}/{j}"
                ids = [ord(c) for c in text[-5:]]
                row.append(Generation(text=text, token_ids=ids, n_tokens=len(ids),
                                      finish_reason=FINISH[(seed + j) % 3],  # type: ignore[arg-type]
                                      logprob_mean=-0.1 * (j + 1), seconds=0.001))
            out.append(row)
            if progress is not None:
                progress(params.n, params.n)
        return out
