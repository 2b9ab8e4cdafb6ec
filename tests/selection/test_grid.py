"""Dev grids (impetus.selection.grid): product and coordinate search, steps read off one run."""

from __future__ import annotations

import pytest

from impetus.selection.grid import choose_on_dev, grid_note, read_off_one_run

GRID = {"a": [1, 2, 3], "b": ["x", "y"]}


def bowl(point):
    """Best at a = 2, b = y; b = y is better whatever a."""
    return -abs(point["a"] - 2) + (0.5 if point["b"] == "y" else 0.0)


def test_product_scores_every_combination():
    chosen, table = choose_on_dev(GRID, bowl)
    assert chosen == {"a": 2, "b": "y"} and len(table) == 6


def test_coordinate_scores_one_setting_at_a_time():
    chosen, table = choose_on_dev(GRID, bowl, "coordinate")
    assert chosen == {"a": 2, "b": "y"}
    # start (a 1, b x), then a's other values at b x, then b y at a 2: 1 + 2 + 1 points
    assert [p["settings"] for p in table] == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}, {"a": 3, "b": "x"},
                                              {"a": 2, "b": "y"}]


def test_coordinate_ties_keep_the_earlier_value_and_differs_from_product_when_settings_interact():
    def xor(point):  # only the combination (3, y) scores: a coordinate search cannot see it from (1, x)
        return 1.0 if (point["a"], point["b"]) == (3, "y") else 0.0

    assert choose_on_dev(GRID, xor)[0] == {"a": 3, "b": "y"}
    assert choose_on_dev(GRID, xor, "coordinate")[0] == {"a": 1, "b": "x"}


def test_an_unknown_search_is_refused():
    with pytest.raises(ValueError, match="grid search 'random'"):
        choose_on_dev(GRID, bowl, "random")


def test_steps_are_read_off_one_run_at_the_largest():
    runs = []

    def run(point, steps):
        runs.append(dict(point))
        return {s: point["tau"] * s for s in steps}

    grid = {"steps": [2, 8, 4], "tau": [1.0, 0.5]}
    score = read_off_one_run(grid, "steps", 12, run)
    chosen, table = choose_on_dev(grid, score, "coordinate")
    assert chosen == {"steps": 8, "tau": 1.0} and len(table) == 4
    assert runs == [{"tau": 1.0, "steps": 8}, {"tau": 0.5, "steps": 8}]  # one run per tau, at the largest
    assert read_off_one_run({"tau": [1.0]}, "steps", 12, run)({"tau": 1.0}) == 12.0  # not listed: the default


def test_grid_note_names_the_search_and_the_values():
    note = grid_note({"grid": {"steps": [4, 12], "tau": [0.3]}, "search": "coordinate"})
    assert note == "coordinate search over steps [4, 12]; tau [0.3], steps read off one run at the largest"
