"""Child process for the resume test: samples shards, then hangs in the 2nd shard until killed."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest import make_tiny  # noqa: E402
from test_runner import PARAMS, problems_table  # noqa: E402

from impetus.lm.runner import sample_problems  # noqa: E402
from impetus.lm.sampler import get_sampler  # noqa: E402


class HangOnSecondCall:
    """Delegates to a real sampler, but the 2nd call sleeps (the parent SIGKILLs us then)."""

    name = "hang"

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def generate(self, prompts, params, seeds, progress=None):
        self.calls += 1
        if self.calls == 2:
            print("HANGING", flush=True)
            time.sleep(120)
        return self.inner.generate(prompts, params, seeds, progress)


if __name__ == "__main__":
    model, tok = make_tiny()
    sampler = HangOnSecondCall(get_sampler("hf", model, tok))
    sample_problems(sampler, problems_table(), PARAMS, Path(sys.argv[1]), shard_size=2, run_key="k", progress=False)
