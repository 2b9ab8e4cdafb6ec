"""Settings chosen on dev by a small grid (V2 and EBD), never on eval (Kedro-free)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of ``grid``'s values, in the order given (the first value of each first);
    an empty grid is the one point ``{}`` (the configured settings)."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(list(grid[k]) for k in keys))]


def choose_on_dev(grid: Mapping[str, Sequence[Any]], score: Callable[[dict[str, Any]], float]
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(chosen point, table)``: the grid point with the highest dev ``score`` (ties: the earliest,
    so list cheaper settings first) and every point's score."""
    table = [{"settings": p, "dev_score": float(score(p))} for p in grid_points(grid)]
    best = max(range(len(table)), key=lambda i: (table[i]["dev_score"], -i))
    return dict(table[best]["settings"]), table
