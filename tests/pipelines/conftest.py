"""A throwaway copy of the Kedro project (conf only; the package is installed) per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from kedro.framework.startup import bootstrap_project

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def project(tmp_path, monkeypatch) -> Path:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("local"))
    (tmp_path / "conf" / "local").mkdir()
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "src").mkdir()  # kedro wants a source dir; the package itself is installed
    monkeypatch.chdir(tmp_path)
    bootstrap_project(tmp_path)
    return tmp_path
