"""Locate the shared benchmark data (env IMPETUS_SHARED_DATA, else <repo root>/../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to shared/data; skips the test when it is absent."""
    path = Path(os.environ.get("IMPETUS_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")
    if not (path / "gsm8k").is_dir():
        pytest.skip(f"shared benchmark data not found at {path} (set IMPETUS_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def loaded(shared_data: Path):
    """Load each benchmark once per session: ``loaded(name) -> (benchmark, df)``."""
    from impetus.benchmarks import get_benchmark

    folders = {"gsm8k": "gsm8k", "svamp": "svamp", "arc_challenge": "arc", "arc_easy": "arc",
               "bbh": "bbh", "math500": "math500"}
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            b = get_benchmark(name)
            cache[name] = (b, b.load(shared_data / folders[name]))
        return cache[name]

    return get
