"""Settings chosen on dev by a small grid (V2 and EBD), never on eval (Kedro-free).

Two searches: ``product`` scores every combination of the grid's values; ``coordinate`` scores
one setting at a time (in the grid's key order, the others held at their best so far, starting
from every key's first value), ``1 + Σ_k (len(values_k) − 1)`` points instead of their product.
A setting whose smaller values are prefixes of a run with its largest (MH or optimisation steps:
a chain after ``s`` of ``K`` steps is exactly the chain of an ``s``-step run) is read off that one
run by :func:`read_off_one_run`, so listing it costs nothing beyond its largest value.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

Search = Literal["product", "coordinate"]
SEARCHES: tuple[str, ...] = ("product", "coordinate")


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of ``grid``'s values, in the order given (the first value of each first);
    an empty grid is the one point ``{}`` (the configured settings)."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(list(grid[k]) for k in keys))]


def _best(table: list[dict[str, Any]], rows: Sequence[int]) -> int:
    """The row of ``rows`` with the highest dev score; ties: the earliest (cheaper settings first)."""
    return max(rows, key=lambda i: (table[i]["dev_score"], -rows.index(i)))


def choose_on_dev(grid: Mapping[str, Sequence[Any]], score: Callable[[dict[str, Any]], float],
                  search: Search = "product") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(chosen point, table)``: the grid point with the highest dev ``score`` found by ``search``
    (ties: the earliest, so list cheaper settings first) and every point scored, in order."""
    if search not in SEARCHES:
        raise ValueError(f"grid search {search!r} is not one of {list(SEARCHES)}")
    table: list[dict[str, Any]] = []
    index: dict[tuple, int] = {}

    def row(point: dict[str, Any]) -> int:
        key = tuple((k, repr(v)) for k, v in point.items())
        if key not in index:
            index[key] = len(table)
            table.append({"settings": dict(point), "dev_score": float(score(dict(point)))})
        return index[key]

    if search == "product":
        return dict(table[_best(table, [row(p) for p in grid_points(grid)])]["settings"]), table
    current = {k: list(v)[0] for k, v in grid.items()}
    row(current)
    for key, values in grid.items():
        rows = [row(current | {key: v}) for v in values]
        current = dict(table[_best(table, rows)]["settings"])
    return current, table


def read_off_one_run(grid: Mapping[str, Sequence[int]], key: str, default: int,
                     run: Callable[[dict[str, Any], list[int]], Mapping[int, float]]
                     ) -> Callable[[dict[str, Any]], float]:
    """A ``score`` for :func:`choose_on_dev` when every value of ``grid[key]`` (``default`` if the
    grid does not list it) can be read off one run at the largest: ``run(point with key = largest,
    values) -> {value: dev score}``. Runs are cached by the point's other settings."""
    values = sorted(int(v) for v in grid.get(key, [default]))
    cache: dict[str, Mapping[int, float]] = {}

    def score(point: dict[str, Any]) -> float:
        tag = run_key(point, key)
        if tag not in cache:
            rest = {k: v for k, v in point.items() if k != key}
            cache[tag] = run(rest | {key: values[-1]}, values)
        return float(cache[tag][int(point.get(key, default))])

    return score


def run_key(point: Mapping[str, Any], key: str) -> str:
    """Which run of :func:`read_off_one_run` scored ``point``: its settings but ``key``."""
    return repr(sorted((k, repr(v)) for k, v in point.items() if k != key))


def grid_note(result: Mapping[str, Any]) -> str:
    """How a report's grid was searched, for its text: the search and the grid's values."""
    grid = result.get("grid") or {}
    values = "; ".join(f"{k} {list(v)}" for k, v in grid.items())
    steps = ", steps read off one run at the largest" if "steps" in grid else ""
    return f"{result.get('search', 'product')} search over {values}{steps}"
