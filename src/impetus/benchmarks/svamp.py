"""SVAMP (Patel et al. 2021): one-step and two-step arithmetic word problems (single file)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from impetus.benchmarks._io import DataFormatError, EmptySourceError, hf_records, json_array_lines, read_json, require
from impetus.benchmarks.base import Row, make_row, meta_of, register
from impetus.benchmarks.errors import at
from impetus.benchmarks.numeric import NumericBenchmark, canonical_number, format_equation_steps

logger = logging.getLogger(__name__)

_FIELDS = ("ID", "Body", "Question", "Equation", "Answer")


@register("svamp")
class SVAMP(NumericBenchmark):
    """Rows: Body + " " + Question; gold from Answer; exemplar solution built from Equation."""

    reserve_fewshot = True  # the local file has no train split
    local_hint = "../shared/data/svamp"

    def expected_layout(self) -> str:
        return "SVAMP.json (a JSON array) or a folder holding it"

    def _row(self, rec: dict[str, Any], split: str, where: str, line: int) -> dict[str, Any]:
        require(rec, _FIELDS, where, line)
        gold = canonical_number(str(rec["Answer"]))
        if gold is None:
            raise DataFormatError(f"{where}: line {line}: Answer {rec['Answer']!r} is not a number")
        question = f"{str(rec['Body']).strip()} {str(rec['Question']).strip()}"
        meta = {"equation": str(rec["Equation"]).strip(), "type": rec.get("Type"), "id": rec["ID"]}
        return make_row(f"svamp-{rec['ID']}", self.name, split, question, gold, meta, origin=at(where, line))

    def _load_local(self, path: Path) -> list[dict[str, Any]]:
        if path.is_dir():
            path = path / "SVAMP.json"
            if not path.is_file():
                raise FileNotFoundError(f"{self.name}: {path} not found; expected {self.expected_layout()}")
        data = read_json(path)
        if not isinstance(data, list):
            raise DataFormatError(f"{path}: line 1: expected a JSON array of problems")
        if not data:
            raise EmptySourceError(f"{path}: the JSON array holds no problems")
        return [self._row(r, "test", str(path), n) for n, r in json_array_lines(path, data)]

    def _load_hf(self) -> list[dict[str, Any]]:
        data = hf_records(self.name, "ChilleD/SVAMP", None, self.local_hint)
        return [self._row(r, s, f"hf:ChilleD/SVAMP/{s}", i + 1) for s, recs in data.items() for i, r in enumerate(recs)]

    def _exemplar_ok(self, row: Row) -> bool:
        # One source row (chal-680) has an Answer its Equation does not give; never show such a row.
        eq = meta_of(row).get("equation")
        try:
            return bool(eq) and float(format_equation_steps(eq)[1]) == float(row["gold"])
        except (ValueError, SyntaxError):
            return False

    def format_solution(self, row: Row) -> str:
        """E.g. "( 76.0 - 25.0 )" -> "76 - 25 = 51. The answer is 51."."""
        eq = meta_of(row).get("equation")
        steps = format_equation_steps(eq)[0] if eq else []
        return " ".join(steps + [f"The answer is {row['gold']}."])
