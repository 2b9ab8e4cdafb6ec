"""Errors for bad benchmark input; every message names the file and line (or record) at fault.

A module of its own so both the readers (:mod:`impetus.benchmarks._io`) and the loading checks
(:mod:`impetus.benchmarks.base`) raise them without importing each other.
"""

from __future__ import annotations


class DataFormatError(ValueError):
    """A source record is malformed, breaks a stated limit or lacks a field (message names file and line)."""


class EmptySourceError(DataFormatError):
    """A source file (or a whole source) holds no usable records; the message names it.

    Without this an empty download surfaced much later as "Asked for 8 eval problems but only 0
    are available", with no hint of which file was at fault.
    """


def at(where: str, line: int) -> str:
    """The location prefix of every message: ``"<file>: line <n>"``."""
    return f"{where}: line {line}"
