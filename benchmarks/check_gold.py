"""Sanity-check answer extraction and grading against the gold solutions of the shared data.

Run: ``python benchmarks/check_gold.py --data ../shared/data``. Prints
- GSM8K: the share of train+test gold solutions whose extracted answer equals the ``####`` answer
  (must be 100%),
- MATH-500: the share of gold solutions whose last ``\\boxed{}`` grades equal to ``answer``,
- SVAMP: the share of rows whose Equation evaluates to Answer and whose generated exemplar
  solution extracts back to the gold.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from impetus.benchmarks import get_benchmark
from impetus.benchmarks.base import meta_of
from impetus.benchmarks.math500 import math_equal
from impetus.benchmarks.numeric import format_equation_steps, numbers_equal


def _rate(ok: int, n: int) -> str:
    return f"{ok}/{n} = {100.0 * ok / max(n, 1):.2f}%"


def check_gsm8k(data: Path) -> bool:
    """Extract from every train+test gold solution; it must equal the '####' answer."""
    b = get_benchmark("gsm8k")
    df = b.load(data / "gsm8k")
    bad = [pid for pid, meta, gold in zip(df.problem_id, df.meta, df.gold)
           if b.extract(json.loads(meta)["solution"]) != gold]
    print(f"GSM8K gold extraction (train+test): {_rate(len(df) - len(bad), len(df))}")
    for pid in bad[:5]:
        print(f"  mismatch: {pid}")
    return not bad


def check_math500(data: Path) -> bool:
    """Grade each solution's boxed answer against the answer field with math-verify."""
    b = get_benchmark("math500")
    df = b.load(data / "math500")
    bad, bad_mv = [], []
    for _, row in df.iterrows():
        boxed = b.extract(meta_of(row)["solution"])
        if not b.grade(boxed, row["gold"]):
            bad.append(row["problem_id"])
        # Same check with math-verify on every row (no identical-text shortcut), to test the verifier.
        if not math_equal(boxed, row["gold"], fast_path=False):
            bad_mv.append(row["problem_id"])
    print(f"MATH-500 boxed-solution grades equal to answer (grade()): {_rate(len(df) - len(bad), len(df))}")
    print(f"MATH-500 same, math-verify parse+verify on every row: {_rate(len(df) - len(bad_mv), len(df))}")
    for pid in sorted(set(bad) | set(bad_mv))[:10]:
        print(f"  mismatch: {pid}")
    return (len(df) - len(bad)) / len(df) >= 0.99


def check_svamp(data: Path) -> bool:
    """Equation evaluates to Answer, and the exemplar text built from it extracts to gold."""
    b = get_benchmark("svamp")
    df = b.load(data / "svamp")
    eq_bad, sol_ok = [], 0
    for _, row in df.iterrows():
        value = format_equation_steps(meta_of(row)["equation"])[1]
        if not numbers_equal(str(float(value)), row["gold"]):
            eq_bad.append(row["problem_id"])
        sol_ok += b.extract(b.format_solution(row)) == row["gold"]
    print(f"SVAMP Equation evaluates to Answer: {_rate(len(df) - len(eq_bad), len(df))}"
          f"{f' (source errors: {eq_bad})' if eq_bad else ''}")
    print(f"SVAMP exemplar solution extracts to gold: {_rate(sol_ok, len(df))}")
    shots = b.fewshot_rows()
    shots_ok = not set(shots.problem_id) & set(eq_bad)
    print(f"SVAMP picked exemplars {list(shots.problem_id)} all consistent: {shots_ok}")
    # A data error in the source is reported, not fatal; an inconsistent exemplar is.
    return shots_ok and sol_ok == len(df)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder laid out like shared/data")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    ok = True
    for check in (check_gsm8k, check_math500, check_svamp):
        t = time.perf_counter()
        ok &= check(args.data)
        print(f"  ({check.__name__}: {time.perf_counter() - t:.1f} s)")
    print(f"Total {time.perf_counter() - t0:.1f} s; {'all checks passed' if ok else 'SOME CHECKS FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
