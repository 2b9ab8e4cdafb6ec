"""Benchmarks behind one registry: ``get_benchmark(name, **options)`` and ``list_benchmarks()``.

Each module registers its class with ``@register("name")``; adding a benchmark is one new module
plus one import line below.
"""

from impetus.benchmarks.base import COLUMNS, Benchmark, get_benchmark, is_missing, list_benchmarks, register
from impetus.benchmarks.errors import DataFormatError, EmptySourceError

# Imported for their @register side effect.
from impetus.benchmarks import arc, arith, bbh, gsm8k, math500, svamp  # noqa: E402,F401  isort: skip

__all__ = [
    "COLUMNS", "Benchmark", "DataFormatError", "EmptySourceError", "get_benchmark", "is_missing",
    "list_benchmarks", "register",
]
