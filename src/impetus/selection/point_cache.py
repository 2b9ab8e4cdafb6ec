"""Points of a long loop kept on disk, so a rerun after a crash refits only the points it lacks.

A point is stored under a key made of everything its value depends on: the data it reads (a content
digest of the tables and arrays, :func:`content_digest`), the settings, and the code (the bytes of
the ``impetus`` package's sources, so a code change never returns a stale point). Writes are
atomic (a temporary file renamed into place), so a run killed mid-write leaves no half a point.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd

__all__ = ["content_digest", "code_digest", "PointCache"]


def _update_array(h: Any, a: Any) -> None:
    a = np.asarray(a)
    if a.dtype == object:
        a = a.astype(str)
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(a.tobytes())


def _update_frame(h: Any, df: pd.DataFrame) -> None:
    h.update(repr(list(df.columns)).encode())
    for col in df.columns:
        s = df[col]
        if s.dtype == object and len(s) and isinstance(s.iloc[0], np.ndarray):  # recorded per-row arrays
            for a in s:
                _update_array(h, a)
        elif pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_extension_array_dtype(s):
            _update_array(h, s.to_numpy())
        else:  # strings, nullable integers: their text (missing values as <NA>/nan)
            _update_array(h, s.astype(str).to_numpy())


def content_digest(parts: Iterable[Any]) -> str:
    """A digest of tables (``DataFrame``), dicts of arrays (hidden states), arrays and JSON-able values."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        if isinstance(part, pd.DataFrame):
            _update_frame(h, part)
        elif isinstance(part, Mapping) and part and all(isinstance(v, (np.ndarray, list)) for v in part.values()):
            for k in sorted(part):
                h.update(str(k).encode())
                _update_array(h, part[k])
        elif isinstance(part, np.ndarray):
            _update_array(h, part)
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


def code_digest(package: str = "impetus") -> str:
    """A digest of the package's ``.py`` sources (any code change gives another digest)."""
    root = Path(__import__(package).__file__).parent
    h = hashlib.blake2b(digest_size=16)
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


class PointCache:
    """JSON points under ``folder/<key>.json``; ``folder`` None keeps nothing (every point computed)."""

    def __init__(self, folder: str | None, base_key: str):
        self.folder = Path(folder) if folder else None
        self.base_key = base_key
        self.read = 0

    def path(self, point: Any) -> Path | None:
        if self.folder is None:
            return None
        return self.folder / f"{content_digest([self.base_key, point])}.json"

    def get(self, point: Any, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The stored value of ``point`` if any, else ``compute()``, stored before it is returned."""
        path = self.path(point)
        if path is not None and path.exists():
            self.read += 1
            return json.loads(path.read_text())
        value = compute()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(value))
            os.replace(tmp, path)
        return value
