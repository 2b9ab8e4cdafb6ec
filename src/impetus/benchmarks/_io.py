"""Strict readers for benchmark source files and the Hugging Face fallback.

Every reader fails fast with the file and line of the problem, so a corrupt download never turns
into a silently smaller benchmark.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from impetus.benchmarks.base import is_missing
from impetus.benchmarks.errors import DataFormatError, EmptySourceError, at

__all__ = [
    "DataFormatError", "EmptySourceError", "content_hash", "hf_records", "json_array_lines", "read_json",
    "read_jsonl", "read_text", "require",
]

logger = logging.getLogger(__name__)


def _decode(raw: bytes, where: str, first_line: int = 1) -> str:
    """``raw`` as UTF-8; a bad byte raises :class:`DataFormatError` with its line and column.

    Python's own UnicodeDecodeError gives only a byte offset into the whole file.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + raw.count(b"\n", 0, exc.start)
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataFormatError(
            f"{at(where, line)}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {column}); "
            "re-save the file as UTF-8"
        ) from None


def read_text(path: Path) -> str:
    """A whole text file as UTF-8 (errors name the file, line and column of a bad byte)."""
    return _decode(Path(path).read_bytes(), str(path))


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` for each non-blank line of a JSON Lines file (1-based).

    Raises :class:`EmptySourceError` (naming the file) when the file has no record at all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (expected a JSON Lines file)")
    if path.stat().st_size == 0:
        raise EmptySourceError(f"{path}: file is empty (0 bytes); expected one JSON object per line")
    n = 0
    with path.open("rb") as fh:  # decoded per line, so a bad byte names its line
        for lineno, raw in enumerate(fh, start=1):
            line = _decode(raw, str(path), lineno)
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFormatError(f"{at(str(path), lineno)}: malformed JSON ({exc.msg})") from exc
            if not isinstance(rec, dict):
                raise DataFormatError(f"{path}: line {lineno}: expected a JSON object, got {type(rec).__name__}")
            n += 1
            yield lineno, rec
    if n == 0:
        raise EmptySourceError(f"{path}: no records (only blank lines); expected one JSON object per line")


def read_json(path: Path) -> Any:
    """Load a whole JSON document; a syntax error names the file and the line it is on."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (expected a JSON file)")
    text = read_text(path)
    if not text.strip():
        raise EmptySourceError(f"{path}: file is empty" + (" (0 bytes)" if not text else " (only whitespace)"))
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}: line {exc.lineno}: malformed JSON ({exc.msg})") from exc


def json_array_lines(path: Path, records: list[Any]) -> list[tuple[int, Any]]:
    """Pair each element of a top-level JSON array with the line its object starts on.

    Error messages for SVAMP-style array files can then name a line just like JSONL ones. The
    heuristic counts lines that open an object at the array's top level, which is how pretty
    printed arrays are laid out; when it does not match the record count we fall back to indices.
    """
    starts: list[int] = []
    depth = 0
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        stripped = line.strip()
        if depth == 1 and stripped.startswith("{"):
            starts.append(lineno)
        # Strings here never hold braces in practice; this is only a locator for messages.
        depth += stripped.count("{") + stripped.count("[") - stripped.count("}") - stripped.count("]")
    if len(starts) != len(records):
        starts = list(range(1, len(records) + 1))
    return list(zip(starts, records))


def require(rec: Mapping[str, Any], fields: Iterable[str], where: str, line: int) -> None:
    """Raise :class:`DataFormatError` naming the first missing/null field, the file and the line."""
    if not isinstance(rec, Mapping):
        raise DataFormatError(f"{where}: line {line}: expected a JSON object, got {type(rec).__name__}")
    for field in fields:
        if field not in rec or is_missing(rec[field]):  # NaN: a hub record's null
            raise DataFormatError(f"{where}: line {line}: missing required field {field!r}")


def content_hash(*parts: str, n: int = 12) -> str:
    """Short stable hash of text parts; used for ids when the source has none."""
    h = hashlib.sha1("\x1f".join(parts).encode("utf-8")).hexdigest()
    return h[:n]


def hf_records(benchmark: str, hub_id: str, config: str | None, local_hint: str) -> dict[str, list[dict]]:
    """Load ``hub_id`` with :func:`datasets.load_dataset` and return ``{split: [record, ...]}``.

    Any failure (offline, gated, renamed) becomes a RuntimeError that tells the user to set the
    ``benchmark.source`` parameter to a local path instead (the only fix available on an
    air-gapped machine), naming the parameter the pipeline user sets as well as ``load()``.
    """
    try:
        import datasets  # imported lazily: slow, and only this code path needs it

        dd = datasets.load_dataset(hub_id, config) if config else datasets.load_dataset(hub_id)
        out = {str(split): [dict(r) for r in ds] for split, ds in dd.items()}
    except Exception as exc:  # noqa: BLE001 - any hub failure gets the same actionable message
        raise RuntimeError(
            f"{benchmark}: could not load {hub_id!r}{f' ({config})' if config else ''} from the "
            f"Hugging Face hub: {type(exc).__name__}: {exc}. This machine may be offline; set "
            f"benchmark.source to a local path, e.g. {local_hint!r} (in Python: load(<path>))."
        ) from exc
    logger.info("%s: loaded %s from the hub: %s", benchmark, hub_id, {k: len(v) for k, v in out.items()})
    return out
