"""Fixtures shared by the V2 tests."""

from __future__ import annotations

from typing import Any, Callable

import pytest


@pytest.fixture()
def counting_rows(monkeypatch) -> Callable[[Any], list[int]]:
    """``counting_rows(sampler)``: from then on, the number of rows of each ``continue_rows`` call the
    sampler gets (how many greedy continuations were really generated)."""
    def start(sampler: Any) -> list[int]:
        rows: list[int] = []
        inner = sampler.continue_rows
        monkeypatch.setattr(sampler, "continue_rows",
                            lambda prompts, *a, **kw: rows.append(len(prompts)) or inner(prompts, *a, **kw))
        return rows

    return start


@pytest.fixture()
def forget_answers(monkeypatch) -> Callable[[Any], None]:
    """``forget_answers(opt)``: the optimiser behaves as before answers were looked up: every call of
    ``opt._answers`` first forgets each job's known windows and the run's stored continuations."""
    def start(opt: Any) -> None:
        answers = opt._answers

        def forgetful(jobs, energy, windows):
            for _, job in jobs:
                job.known.clear()
            opt.reuse.continuations.clear()
            return answers(jobs, energy, windows)

        monkeypatch.setattr(opt, "_answers", forgetful)

    return start
