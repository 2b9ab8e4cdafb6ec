"""Child process for the lock test: waits for its sibling, then samples a shared shard folder."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fakes import PARAMS, SHARD, FakeSampler, problems_table  # noqa: E402

from impetus.lm.runner import sample_problems  # noqa: E402

if __name__ == "__main__":
    folder, log, out = (Path(a) for a in sys.argv[1:4])
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(process)d %(message)s")
    # Barrier: both children start sampling together (imports take a variable time), so the
    # second one really finds shard 0 locked.
    ready = folder.parent / "ready"
    ready.mkdir(exist_ok=True)
    (ready / str(os.getpid())).touch()
    deadline = time.time() + 60
    while len(list(ready.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.01)
    df, _ = sample_problems(FakeSampler(delay=0.5, log_file=log), problems_table(), PARAMS, folder,
                            shard_size=SHARD, run_key="k", progress=False)
    df.to_parquet(out, index=False)
