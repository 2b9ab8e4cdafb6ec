"""MATH-500 (Lightman et al. 2023): competition maths with LaTeX answers, graded by math-verify."""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any

from impetus.benchmarks._io import hf_records, read_jsonl, require
from impetus.benchmarks.base import Benchmark, Row, Span, as_text, make_row, meta_of, register, strip_span
from impetus.benchmarks.errors import at
from impetus.benchmarks.numeric import boxed_spans

logger = logging.getLogger(__name__)

_ANSWER_IS = re.compile(r"answer is", re.I)
_FIELDS = ("problem", "solution", "answer", "unique_id")


def extract_math_span(text: str | None) -> Span | None:
    """Contents of the last complete ``\\boxed{...}``, else the rest of the "answer is" line."""
    text = as_text(text)
    if text is None:
        return None
    boxes = boxed_spans(text)
    if boxes:
        span = strip_span(text, *boxes[-1], chars=" \t\n")
        if span:
            return span
    for m in reversed(list(_ANSWER_IS.finditer(text))):
        eol = text.find("\n", m.end())
        span = strip_span(text, m.end(), len(text) if eol < 0 else eol, chars=" \t:*$.")
        if span:
            return span
    return None


def _squash(s: str) -> str:
    return re.sub(r"\s+|\\[,;! ]|\$", "", s)


def math_equal(answer: str | None, gold: str, fast_path: bool = True) -> bool:
    """Equivalence of LaTeX answers: identical text (skipped if not ``fast_path``), else math-verify.

    A missing (None/NaN/NA) or blank answer or gold is never equal."""
    answer, gold = as_text(answer), as_text(gold)
    if answer is None or gold is None or not answer.strip() or not gold.strip():
        return False
    if fast_path and _squash(answer) == _squash(gold):
        return True
    from math_verify import parse, verify  # lazy: sympy import costs ~0.7 s

    # math-verify's timeouts use SIGALRM, which only works in the main thread (kedro may use others).
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    g = parse(f"${gold}$", parsing_timeout=timeout)
    p = parse(f"${answer}$", parsing_timeout=timeout)
    if not g or not p:
        return False
    return bool(verify(g, p, timeout_seconds=timeout))


@register("math500")
class MATH500(Benchmark):
    """Rows: problem; gold = answer; meta holds solution, subject, level, unique_id."""

    reserve_fewshot = True
    local_hint = "../shared/data/math500"
    chat_instruction = "Think step by step, then give your final answer as \\boxed{<answer>}."

    def expected_layout(self) -> str:
        return "test.jsonl (MATH-500) or a folder holding it"

    def _row(self, rec: dict[str, Any], split: str, where: str, line: int) -> dict[str, Any]:
        require(rec, _FIELDS, where, line)
        meta = {k: rec.get(k) for k in ("solution", "subject", "level", "unique_id")}
        return make_row(
            f"math500-{rec['unique_id']}", self.name, split, str(rec["problem"]).strip(), str(rec["answer"]).strip(), meta,
            origin=at(where, line),
        )

    def _load_local(self, path: Path) -> list[dict[str, Any]]:
        if path.is_dir():
            path = path / "test.jsonl"
            if not path.is_file():
                raise FileNotFoundError(f"{self.name}: {path} not found; expected {self.expected_layout()}")
        return [self._row(r, "test", str(path), n) for n, r in read_jsonl(path)]

    def _load_hf(self) -> list[dict[str, Any]]:
        data = hf_records(self.name, "HuggingFaceH4/MATH-500", None, self.local_hint)
        return [self._row(r, "test", f"hf:HuggingFaceH4/MATH-500/{s}", i + 1) for s, recs in data.items() for i, r in enumerate(recs)]

    def _exemplar_ok(self, row: Row) -> bool:
        # Short exemplars without Asymptote diagrams keep few-shot prompts small.
        sol = meta_of(row).get("solution") or ""
        return len(sol) < 500 and "[asy]" not in sol and "\\boxed" in sol

    def format_solution(self, row: Row) -> str:
        """The reference solution (ends in ``\\boxed{}``) followed by "The answer is $X$."."""
        sol = (meta_of(row).get("solution") or "").strip()
        return f"{sol}\nThe answer is ${row['gold']}$." if sol else f"The answer is $\\boxed{{{row['gold']}}}$."

    def stop_strings(self, style: str) -> list[str]:
        # Solutions contain blank lines, so only the next "Q:" block ends a few-shot answer.
        return ["\nQ:"] if style == "fewshot" else super().stop_strings(style)

    def extract_span(self, completion: str, row: Row | None = None) -> Span | None:
        """See :func:`extract_math_span`."""
        return extract_math_span(completion)

    def grade(self, answer: str | None, gold: str) -> bool:
        """See :func:`math_equal`."""
        return math_equal(answer, gold)
