"""Points of a long loop kept on disk, so a rerun after a crash recomputes only the points it lacks
(the learning curve's points; V2's and EBD's dev-grid runs, whose tables go through
:func:`frame_to_json`).

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

__all__ = ["content_digest", "code_digest", "frame_to_json", "frame_from_json", "PointCache"]


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


def _update(h: Any, part: Any) -> None:
    if isinstance(part, pd.DataFrame):
        _update_frame(h, part)
    elif isinstance(part, np.ndarray):
        _update_array(h, part)
    elif hasattr(part, "detach") and hasattr(part, "dtype"):  # a torch tensor (weights), without importing torch
        t = part.detach().cpu()
        h.update(str(t.dtype).encode())
        _update_array(h, t.float().numpy() if t.is_floating_point() else t.numpy())
    elif isinstance(part, Mapping):
        h.update(f"{{{len(part)}".encode())
        for k in sorted(part, key=str):
            h.update(json.dumps(str(k)).encode())
            _update(h, part[k])
        h.update(b"}")
    elif isinstance(part, (list, tuple)):
        h.update(f"[{len(part)}".encode())
        for p in part:
            _update(h, p)
        h.update(b"]")
    else:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())


def content_digest(parts: Iterable[Any]) -> str:
    """A digest of tables (``DataFrame``), arrays, torch tensors and JSON-able values, and of dicts and
    lists of them at any depth (hidden states; a learned energy's record: its config and weights)."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        _update(h, part)
    return h.hexdigest()


def frame_to_json(df: pd.DataFrame) -> dict[str, Any]:
    """A table as a JSON-able point value; :func:`frame_from_json` gives it back with its dtypes."""
    return {"columns": [str(c) for c in df.columns], "dtypes": {str(c): str(t) for c, t in df.dtypes.items()},
            "rows": {str(c): df[c].tolist() for c in df.columns}}


def frame_from_json(value: Mapping[str, Any]) -> pd.DataFrame:
    """The table :func:`frame_to_json` stored (object columns as JSON gave them back)."""
    df = pd.DataFrame({c: value["rows"][c] for c in value["columns"]}, columns=value["columns"])
    typed = {c: t for c, t in value["dtypes"].items() if t != "object"}
    return df.astype(typed) if typed else df


def _plain(x: Any) -> Any:
    """JSON for the numpy values a point may hold (``json.dumps``'s ``default``)."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON-serialisable in a stored point")


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

    @classmethod
    def keyed(cls, folder: str | None, parts: Iterable[Any]) -> "PointCache":
        """A cache under ``folder`` keyed by the package's code (:func:`code_digest`) and ``parts`` (the
        inputs and settings its points depend on); with ``folder`` None nothing is kept, and nothing is
        digested either."""
        if folder is None:
            return cls(None, "")
        return cls(folder, content_digest([code_digest(), *parts]))

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
            tmp.write_text(json.dumps(value, default=_plain))
            os.replace(tmp, path)
        return value
