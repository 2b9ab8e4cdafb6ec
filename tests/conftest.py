"""Suite-wide settings (no telemetry, no hub, tests never write into the project's own data/) and
the one scratch Kedro project fixture."""

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def project(tmp_path, monkeypatch) -> Path:
    """A throwaway copy of the Kedro project (conf only; the package is installed), bootstrapped and
    made the working directory, so its data/ and mlruns/ are scratch."""
    from kedro.framework.startup import bootstrap_project

    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("local"))
    (tmp_path / "conf" / "local").mkdir()
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "src").mkdir()  # kedro wants a source dir; the package itself is installed
    monkeypatch.chdir(tmp_path)
    bootstrap_project(tmp_path)
    return tmp_path
