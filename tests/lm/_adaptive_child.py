"""Child process for the adaptive kill test: samples in waves, hangs in shard 2's second wave."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest import make_tiny  # noqa: E402
from test_adaptive_online import ADAPTIVE, problems_table, settled_first_two  # noqa: E402

from impetus.lm.runner import sample_problems  # noqa: E402
from impetus.lm.sampler import get_sampler  # noqa: E402


class HangInSecondWave:
    """Delegates to a real sampler, but sleeps in the first call past the first wave (the parent
    SIGKILLs us then): shard 1's second wave, since shard 0's problems all stop after one wave."""

    name = "hang"

    def __init__(self, inner):
        self.inner = inner

    def generate(self, prompts, params, seeds, progress=None, first_sample=0, **kw):
        if first_sample > 0:
            print("HANGING", flush=True)
            time.sleep(120)
        return self.inner.generate(prompts, params, seeds, progress, first_sample=first_sample, **kw)


if __name__ == "__main__":
    model, tok = make_tiny()
    sampler = HangInSecondWave(get_sampler("hf", model, tok))
    sample_problems(sampler, problems_table(), ADAPTIVE, Path(sys.argv[1]), shard_size=2, run_key="k",
                    progress=False, stop=settled_first_two())
