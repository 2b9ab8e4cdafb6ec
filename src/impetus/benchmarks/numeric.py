"""Numeric answers: finding, normalising and comparing numbers (GSM8K, SVAMP, arith).

Extraction priority (first that yields a number wins): a ``####`` marker, "answer is X",
"answer: X", ``\\boxed{X}``, then the last number in the text. Markers use their *last*
occurrence, since models often restate the question's numbers before concluding.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from impetus.benchmarks.base import Benchmark, Row, Span, as_text

# A number: optional sign (not after a word char or ")" so "5-3" is not read as "-3"), digits
# with optional thousands separators, optional decimals. Not preceded by a digit or "." so we
# never start inside another number.
NUMBER_RE = re.compile(r"(?<![\d.])(?:(?<![\w)\]])-)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")
_MARKERS = [re.compile(r"####"), re.compile(r"answer is", re.I), re.compile(r"answer\s*:", re.I)]
_FRACTION_RE = re.compile(r"^(-?\d+)\s*/\s*(\d+)$")


def boxed_spans(text: str | None) -> list[tuple[int, int]]:
    """``[start, end)`` of the contents of every complete ``\\boxed{...}`` (balanced braces)."""
    spans: list[tuple[int, int]] = []
    text = as_text(text)
    if text is None:
        return spans
    for m in re.finditer(r"\\boxed\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:  # a truncated generation leaves an unclosed box: skip it
            spans.append((m.end(), i - 1))
    return spans


def _first_number(text: str, start: int, end: int) -> Span | None:
    m = NUMBER_RE.search(text, start, end)
    return (m.group(), m.start(), m.end()) if m else None


def extract_number_span(text: str | None) -> Span | None:
    """The answer number in ``text`` and its offsets, by the module's priority order."""
    text = as_text(text)
    if text is None:
        return None
    for marker in _MARKERS:
        # Last marker first; a marker with no number on its line falls back to an earlier one.
        for m in reversed(list(marker.finditer(text))):
            eol = text.find("\n", m.end())
            found = _first_number(text, m.end(), len(text) if eol < 0 else eol)
            if found:
                return found
    for start, end in reversed(boxed_spans(text)):
        found = _first_number(text, start, end)
        if found:
            return found
    last = None
    for last in NUMBER_RE.finditer(text):
        pass
    return (last.group(), last.start(), last.end()) if last else None


def canonical_number(text: str | None) -> str | None:
    """Canonical string of a plain number ("$1,234.50" -> "1234.5", "7.0" -> "7"), else None.

    None/NaN/NA (a missing answer after pandas) give None rather than an AttributeError.
    """
    text = as_text(text)
    if text is None:
        return None
    s = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    frac = _FRACTION_RE.match(s)
    try:
        d = Decimal(frac.group(1)) / Decimal(frac.group(2)) if frac else Decimal(s)
    except (InvalidOperation, ZeroDivisionError):
        return None
    if not d.is_finite():
        return None
    if d == d.to_integral_value():
        return str(int(d))  # also maps "-0" to "0"
    return format(d.normalize(), "f")


def normalize_number(text: str | None) -> str | None:
    """Canonical number for a bare number or a phrase containing one ("12 apples", "#### 72")."""
    text = as_text(text)
    if text is None:
        return None
    direct = canonical_number(text)
    if direct is not None:
        return direct
    span = extract_number_span(text)
    return canonical_number(span[0]) if span else None


def numbers_equal(a: str | None, b: str | None, rel_tol: float = 1e-6) -> bool:
    """Numeric equality of two answers after normalisation (relative tolerance 1e-6); a missing
    side (None/NaN/NA) is never equal."""
    na, nb = normalize_number(a), normalize_number(b)
    if na is None or nb is None:
        return False
    if na == nb:
        return True
    return math.isclose(float(na), float(nb), rel_tol=rel_tol, abs_tol=1e-12)


class NumericBenchmark(Benchmark):
    """Shared extraction/grading for benchmarks whose gold is a single number."""

    chat_instruction = "Think step by step, then finish with 'The answer is <number>.'"

    def extract_span(self, completion: str, row: Row | None = None) -> Span | None:
        """The answer number's text and offsets (see module docstring for the priority)."""
        return extract_number_span(completion)

    def _canonical(self, answer: str) -> str:
        """Canonical numeric string so equal numbers compare and vote as equal strings."""
        return canonical_number(answer) or answer.strip()

    def grade(self, answer: str | None, gold: str) -> bool:
        """Numeric comparison with 1e-6 relative tolerance; missing answers or non-numbers are wrong."""
        return numbers_equal(answer, gold)


def format_equation_steps(expr: str) -> tuple[list[str], Any]:
    """Steps "a op b = c." for a parenthesised arithmetic expression, inner first, and its value.

    Values are kept as exact Fractions so the steps never show float noise.
    """
    import ast
    from fractions import Fraction

    ops = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
    steps: list[str] = []

    def show(v: Fraction) -> str:
        return str(v.numerator) if v.denominator == 1 else canonical_number(str(float(v))) or str(float(v))

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            a, b = ev(node.left), ev(node.right)
            val = {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}.get(type(node.op))
            if val is None:
                if b == 0:
                    raise ValueError(f"division by zero in {expr!r}")
                val = a / b
            steps.append(f"{show(a)} {ops[type(node.op)]} {show(b)} = {show(val)}.")
            return val
        raise ValueError(f"unsupported expression {expr!r}")

    value = ev(ast.parse(expr.strip(), mode="eval").body)
    return steps, value
