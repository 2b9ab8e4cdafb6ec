"""A Kedro dataset for plain records of tensors and arrays, saved without pickle of code objects.

``torch.save`` of a dict of tensors / numbers / strings / lists, read back with
``torch.load(weights_only=True)``: the restricted unpickler refuses anything that could run code,
so a tampered model file cannot execute on load (unlike ``pickle.PickleDataset``). NumPy arrays
are stored as tensors (numeric) or lists (strings) and, with ``numpy: true``, come back as arrays.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import fsspec
import numpy as np
import torch
from kedro.io.core import AbstractVersionedDataset, DatasetError, Version, get_filepath_str, get_protocol_and_path


def _to_storable(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist() if obj.dtype.kind in "OUS" else torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, dict):
        return {k: _to_storable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_storable(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _to_numpy(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: _to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, list) and obj and all(isinstance(v, str) for v in obj):
        return np.asarray(obj, dtype=object)
    return obj


class TorchRecordDataset(AbstractVersionedDataset[Any, Any]):
    """Versionable file dataset: ``torch.save`` on save, ``torch.load(weights_only=True)`` on load."""

    def __init__(self, filepath: str, numpy: bool = False, version: Version | None = None) -> None:
        protocol, path = get_protocol_and_path(filepath, version)
        self._protocol = protocol
        self._fs = fsspec.filesystem(protocol)
        self._numpy = numpy
        super().__init__(filepath=PurePosixPath(path), version=version, exists_function=self._fs.exists,
                         glob_function=self._fs.glob)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "numpy": self._numpy, "version": self._version}

    def load(self) -> Any:
        path = get_filepath_str(self._get_load_path(), self._protocol)
        with self._fs.open(path, "rb") as f:
            try:
                data = torch.load(f, map_location="cpu", weights_only=True)
            except Exception as exc:  # the safe unpickler names what it refused
                raise DatasetError(f"{path}: not a plain tensor record ({exc})") from exc
        return _to_numpy(data) if self._numpy else data

    def save(self, data: Any) -> None:
        path = get_filepath_str(self._get_save_path(), self._protocol)
        self._fs.mkdirs(str(PurePosixPath(path).parent), exist_ok=True)
        with self._fs.open(path, "wb") as f:
            torch.save(_to_storable(data), f)
        self._invalidate_cache()

    def _exists(self) -> bool:
        try:
            path = get_filepath_str(self._get_load_path(), self._protocol)
        except DatasetError:
            return False
        return self._fs.exists(path)

    def _invalidate_cache(self) -> None:
        self._fs.invalidate_cache(get_filepath_str(self._filepath, self._protocol))
