"""Typed parameters as MLflow params.

Nodes receive their parameter blocks as typed objects (:mod:`impetus.config`); kedro-mlflow
flattens only plain dicts into ``block.field`` params, so it would log each block as one repr
string. This hook runs first and hands kedro-mlflow (and any later hook) plain dicts in its own
shallow copy of the node inputs: the node itself still gets the typed objects.
"""

from __future__ import annotations

from typing import Any

from kedro.framework.hooks import hook_impl
from pydantic import BaseModel


class TypedParamsHook:
    """Show ``params:`` inputs that are pydantic models to later hooks as ``model_dump()`` dicts."""

    @hook_impl(tryfirst=True)
    def before_node_run(self, inputs: dict[str, Any]) -> None:
        for key, value in list(inputs.items()):
            if key.startswith("params:") and isinstance(value, BaseModel):
                inputs[key] = value.model_dump(mode="json")
