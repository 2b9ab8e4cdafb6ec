"""GSM8K (Cobbe et al. 2021): grade-school maths word problems with a numeric answer."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from impetus.benchmarks._io import content_hash, hf_records, read_jsonl, require
from impetus.benchmarks.base import Row, make_row, meta_of, register
from impetus.benchmarks.errors import at
from impetus.benchmarks.numeric import NumericBenchmark, canonical_number

logger = logging.getLogger(__name__)

_CALC_RE = re.compile(r"<<[^>]*>>")  # calculator annotations like <<48/2=24>>
_FINAL_RE = re.compile(r"\n?####\s*(.+?)\s*$", re.S)


def gold_from_solution(solution: str, where: str, line: int) -> str:
    """Canonical number after the solution's ``####`` marker (fails with file and line)."""
    m = _FINAL_RE.search(solution)
    gold = canonical_number(m.group(1)) if m else None
    if gold is None:
        raise ValueError(f"{where}: line {line}: answer has no '#### <number>' final line")
    return gold


@register("gsm8k")
class GSM8K(NumericBenchmark):
    """Rows: question; gold = the ``####`` number; meta.solution = the worked answer."""

    local_hint = "../shared/data/gsm8k"

    def expected_layout(self) -> str:
        return "a folder with test.jsonl (and train.jsonl for exemplars) or one such .jsonl file"

    def _row(self, rec: dict[str, Any], split: str, where: str, line: int) -> dict[str, Any]:
        require(rec, ("question", "answer"), where, line)
        q = str(rec["question"]).strip()
        # No source id: hash the question (unique in both splits, no train/test overlap).
        return make_row(
            f"gsm8k-{content_hash(q)}", self.name, split, q,
            gold_from_solution(rec["answer"], where, line), {"solution": rec["answer"]}, origin=at(where, line),
        )

    def _load_local(self, path: Path) -> list[dict[str, Any]]:
        if path.is_file():
            split = "train" if "train" in path.stem else "test"
            return [self._row(r, split, str(path), n) for n, r in read_jsonl(path)]
        test = path / "test.jsonl"
        if not test.is_file():
            raise FileNotFoundError(f"{self.name}: {test} not found; expected {self.expected_layout()}")
        files = [("test", test)] + ([("train", path / "train.jsonl")] if (path / "train.jsonl").is_file() else [])
        return [self._row(r, split, str(f), n) for split, f in files for n, r in read_jsonl(f)]

    def _load_hf(self) -> list[dict[str, Any]]:
        data = hf_records(self.name, "openai/gsm8k", "main", self.local_hint)
        return [self._row(r, s, f"hf:openai/gsm8k/{s}", i + 1) for s, recs in data.items() for i, r in enumerate(recs)]

    def format_solution(self, row: Row) -> str:
        """The reference solution without calculator annotations, ending "The answer is X."."""
        sol = meta_of(row).get("solution")
        if not sol:
            return f"The answer is {row['gold']}."
        body = _FINAL_RE.sub("", _CALC_RE.sub("", sol)).strip()
        return f"{body}\nThe answer is {row['gold']}."
