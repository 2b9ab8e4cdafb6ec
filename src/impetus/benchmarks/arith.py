"""Arith: generated arithmetic problems, the embedded offline default (no data files needed).

``form="expression"`` asks "What is (23 + 45) * 3?"; ``form="word"`` wraps the same steps in a
short GSM8K-style story. Gold is computed exactly with integers. Subtraction never goes below
zero so word problems stay sensible.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from impetus.benchmarks._io import content_hash
from impetus.benchmarks.base import Row, make_row, meta_of, register
from impetus.benchmarks.numeric import NumericBenchmark

logger = logging.getLogger(__name__)

NAMES = ["Ava", "Ben", "Chloe", "Dan", "Emma", "Finn", "Grace", "Hugo", "Ivy", "Jack", "Lena", "Omar", "Maya", "Noah"]
OBJECTS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "stamps", "shells", "cards", "coins"]
_ADD = ["{n} finds {b} more {o}.", "A friend gives {n} {b} more {o}.", "{n} buys {b} more {o}."]
_SUB = ["{n} gives away {b} {o}.", "{n} loses {b} {o}.", "{n} uses {b} of the {o}."]
_MUL = ["Then the number of {o} {n} has becomes {b} times as large.", "{n} ends up with {b} times as many {o}."]
_FEWSHOT_SEED_OFFSET = 1_000_003  # exemplars use their own RNG stream


@dataclass(frozen=True)
class _Problem:
    question: str
    value: int
    steps: list[str]
    expression: str


@register("arith")
class Arith(NumericBenchmark):
    """Generated problems; options: n_problems, form, n_ops, ops, digits, second_digits, seed, n_shots.

    ``second_digits``: digits of the first step's second operand (None: ``digits``), e.g. 1 with
    ``ops="*"`` for "a two-digit number times a one-digit one", one of the testbeds of issue 25's panel.

    Constructor defaults equal ``benchmark.options`` in ``conf/base/parameters_ingest.yml`` (a test
    keeps them in step), so ``get_benchmark("arith")`` in a notebook gives the pipeline's problems.
    """

    default_n_shots = 3

    def __init__(
        self, n_problems: int = 400, form: str = "expression", n_ops: int = 1, ops: str = "+",
        digits: int = 2, seed: int = 0, n_shots: int | None = None, second_digits: int | None = None,
    ) -> None:
        super().__init__(n_shots=n_shots, seed=seed)
        if form not in ("expression", "word"):
            raise ValueError(f"arith: form must be 'expression' or 'word', got {form!r}")
        if not 1 <= int(n_ops) <= 3:
            raise ValueError(f"arith: n_ops must be 1-3, got {n_ops}")
        if not ops or set(ops) - set("+-*"):
            raise ValueError(f"arith: ops must be a non-empty subset of '+-*', got {ops!r}")
        if not 1 <= int(digits) <= 9:
            raise ValueError(f"arith: digits must be 1-9, got {digits}")
        if second_digits is not None and not 1 <= int(second_digits) <= 9:
            raise ValueError(f"arith: second_digits must be 1-9 or null, got {second_digits}")
        self.second_digits = None if second_digits is None else int(second_digits)
        self.n_problems, self.form, self.n_ops = int(n_problems), form, int(n_ops)
        self.ops, self.digits = "".join(sorted(set(ops), key="+-*".index)), int(digits)

    # ------------------------------------------------------------- generation
    def _operand(self, rng: random.Random, digits: int | None = None) -> int:
        digits = digits or self.digits
        lo = 1 if digits == 1 else 10 ** (digits - 1)
        return rng.randint(lo, 10**digits - 1)

    def _generate(self, rng: random.Random) -> _Problem:
        a, b = self._operand(rng), self._operand(rng, self.second_digits)
        op = rng.choice(self.ops)
        if op == "-" and b > a:
            a, b = b, a  # keep results non-negative
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        expr, steps, chain = f"{a} {op} {b}", [f"{a} {op} {b} = {value}."], [(op, b)]
        for _ in range(self.n_ops - 1):
            op = rng.choice(self.ops)
            # Multipliers after the first step are single digits, as in "(23 + 45) * 3".
            c = rng.randint(2, 9) if op == "*" else self._operand(rng)
            if op == "-" and value == 0:
                op, c = "+", self._operand(rng)  # nothing left to take away
            elif op == "-" and c > value:
                c = rng.randint(1, value)
            new = {"+": value + c, "-": value - c, "*": value * c}[op]
            steps.append(f"{value} {op} {c} = {new}.")
            expr, value = f"({expr}) {op} {c}", new
            chain.append((op, c))
        question = f"What is {expr}?" if self.form == "expression" else self._story(rng, a, chain)
        return _Problem(question, value, steps, expr)

    def _story(self, rng: random.Random, a: int, chain: list[tuple[str, int]]) -> str:
        name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
        first_op, b = chain[0]
        if first_op == "*":
            parts = [f"{name} has {a} boxes with {b} {obj} in each box."]
        else:
            parts = [f"{name} has {a} {obj}."]
            parts.append(rng.choice(_ADD if first_op == "+" else _SUB).format(n=name, b=b, o=obj))
        for op, c in chain[1:]:
            parts.append(rng.choice({"+": _ADD, "-": _SUB, "*": _MUL}[op]).format(n=name, b=c, o=obj))
        parts.append(f"How many {obj} does {name} have now?")
        return " ".join(parts)

    def _params_key(self) -> str:
        # second_digits only when set, so every earlier problem id stays as it was
        second = f"|second_digits={self.second_digits}" if self.second_digits is not None else ""
        return f"{self.form}|n_ops={self.n_ops}|ops={self.ops}|digits={self.digits}{second}"

    def _rows(self, rng: random.Random, n: int, split: str, exclude: set[str]) -> list[dict[str, Any]]:
        rows, seen = [], set(exclude)
        attempts = 0
        while len(rows) < n:
            attempts += 1
            if attempts > 50 * n + 1000:
                raise ValueError(
                    f"arith: could only make {len(rows)} distinct problems of {n} for {self._params_key()}; "
                    "raise digits or n_ops, or lower n_problems"
                )
            p = self._generate(rng)
            if p.question in seen:  # dedupe: every problem is distinct
                continue
            seen.add(p.question)
            meta = {"expression": p.expression, "steps": p.steps, "form": self.form,
                    "n_ops": self.n_ops, "ops": self.ops, "digits": self.digits}
            if self.second_digits is not None:
                meta["second_digits"] = self.second_digits
            # The id hashes the text and the params, so it never depends on generation order.
            pid = f"arith-{content_hash(p.question, self._params_key())}"
            rows.append(make_row(pid, self.name, split, p.question, str(p.value), meta))
        return rows

    def _load_rows(self, source: str | Path) -> list[dict[str, Any]]:
        """Generated rows (test + few-shot); ``source`` names no data, so it is ignored.

        Going through :meth:`Benchmark.load` gives arith the same duplicate-id check, exemplar
        bookkeeping (the generated "fewshot" rows become ``fewshot_rows()``) and logging as the
        file-based benchmarks.
        """
        if str(source) not in ("generated", "hf"):
            logger.warning("arith generates its problems; source %r is ignored", str(source))
        logger.info("arith: generating %d test + %d few-shot rows (%s, seed %d)",
                    self.n_problems, self.n_shots, self._params_key(), self.seed)
        return self._load_generated()

    def _load_local(self, path: Path) -> list[dict[str, Any]]:
        return self._load_generated()

    def _load_hf(self) -> list[dict[str, Any]]:
        return self._load_generated()

    def _load_generated(self) -> list[dict[str, Any]]:
        test = self._rows(random.Random(self.seed), self.n_problems, "test", set())
        shots = self._rows(
            random.Random(self.seed + _FEWSHOT_SEED_OFFSET), self.n_shots, "fewshot", {r["question"] for r in test}
        )
        return test + shots

    def format_solution(self, row: Row) -> str:
        """Each step "a + b = c." then "The answer is c."."""
        steps = meta_of(row).get("steps") or []
        return " ".join([*steps, f"The answer is {row['gold']}."])
