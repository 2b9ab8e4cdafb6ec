"""Helpers shared by the stage pipelines."""

from functools import partial, update_wrapper
from typing import Callable


def for_split(func: Callable, split: str) -> Callable:
    """``func`` with ``split=`` fixed, keeping its name and docstring for kedro-viz.

    The split is a property of the node, not a catalog input, so it is bound here.
    """
    return update_wrapper(partial(func, split=split), func)
