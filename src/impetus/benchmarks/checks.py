"""Checks every loaded row must pass before it becomes a problem (the limits each benchmark states).

Readers already reject malformed records; these catch well-formed ones that would still spoil a
run: a question too long for any prompt (one 10 MB record used to land in ``problems_train``), a
multiple-choice item whose single choice gives its answer away, and repeated problem ids. Each
error starts with the file and line the row came from (``origin``, set by :func:`make_row`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from impetus.benchmarks.errors import DataFormatError

ORIGIN = "origin"  # row key holding "<file>: line <n>"; not a table column


def origin_of(row: Mapping[str, Any], index: int, source: str) -> str:
    """Where ``row`` came from, or its position in ``source`` when the benchmark did not say."""
    return row.get(ORIGIN) or f"{source}: row {index + 1}"


def check_row(row: Mapping[str, Any], where: str, max_question_chars: int, min_choices: int | None) -> None:
    """Raise :class:`DataFormatError` (prefixed by ``where``) when ``row`` breaks a limit."""
    question = str(row["question"])
    if not question.strip():
        raise DataFormatError(f"{where}: question is empty")
    if len(question) > max_question_chars:
        raise DataFormatError(
            f"{where}: question has {len(question):,} characters; the limit is {max_question_chars:,} "
            "(no prompt holds it; fix or drop the record)"
        )
    if min_choices is not None:
        n = len(row.get("choices") or [])
        if n < min_choices:
            raise DataFormatError(
                f"{where}: {n} choice(s); at least {min_choices} are needed (with fewer the prompt "
                "gives the answer away)"
            )


def check_rows(
    rows: Iterable[Mapping[str, Any]], source: str, max_question_chars: int, min_choices: int | None = None
) -> None:
    """Check every row and that problem ids are unique; the first failure names its file and line."""
    first_seen: dict[str, str] = {}
    for i, row in enumerate(rows):
        where = origin_of(row, i, source)
        check_row(row, where, max_question_chars, min_choices)
        pid = str(row["problem_id"])
        if pid in first_seen:
            raise DataFormatError(f"{where}: duplicate problem_id {pid!r} (first at {first_seen[pid]})")
        first_seen[pid] = where
