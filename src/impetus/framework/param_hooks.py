"""Typed parameters: every block validated before anything runs, and shown to MLflow as dicts.

Kedro 1.7 validates only the parameter blocks the *selected* pipeline's nodes use, so
``kedro run -p ingest --params "v2_latent.lr=-1"`` would pass and fail much later (or never).
:meth:`TypedParamsHook.after_context_created` validates every block of :data:`impetus.framework.config.PARAMS`
as soon as the context exists, whatever pipeline is selected, and raises :class:`ParameterError`:
a click error, so ``kedro run`` prints one short ``Error: ...`` line (exit status 1) instead of a
traceback with the sentence in the middle.

Nodes receive their parameter blocks as typed objects (:mod:`impetus.framework.config`); kedro-mlflow
flattens only plain dicts into ``block.field`` params, so it would log each block as one repr
string. The same hook runs first before each node and hands kedro-mlflow (and any later hook)
plain dicts in its own shallow copy of the node inputs: the node itself still gets the typed objects.
"""

from __future__ import annotations

from typing import Any, Mapping

import click
from kedro.framework.hooks import hook_impl
from pydantic import BaseModel, ValidationError

from impetus.framework.config import PARAMS


class ParameterError(click.ClickException, ValueError):
    """Invalid parameters. The kedro CLI shows it as ``Error: <message>`` without a traceback."""


def _describe(block: str, exc: ValidationError) -> list[str]:
    """One ``block.field: what is wrong (got value)`` line per pydantic error."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in (block, *err["loc"]))
        value = err.get("input")
        got = "" if isinstance(value, (dict, list)) or value is None else f" (got {value!r})"
        lines.append(f"{where}: {err['msg']}{got}")
    return lines


def validate_all(params: Mapping[str, Any]) -> None:
    """Validate every parameter block of :data:`impetus.framework.config.PARAMS`; raise :class:`ParameterError`
    naming each wrong field (a missing block counts as wrong)."""
    problems: list[str] = []
    for block, model in PARAMS.items():
        if block not in params:
            problems.append(f"{block}: the block is missing (conf/base/parameters_*.yml)")
            continue
        try:
            model.model_validate(params[block])
        except ValidationError as exc:
            problems += _describe(block, exc)
    if problems:
        raise ParameterError("invalid parameters: " + "; ".join(problems)
                             + ". Fix conf/<env>/parameters_*.yml or the --params value.")


class TypedParamsHook:
    """Validate every block up front; show ``params:`` models to later hooks as ``model_dump()`` dicts."""

    @hook_impl(tryfirst=True)
    def after_context_created(self, context: Any) -> None:
        # The raw blocks with --params applied (the config loader merges runtime parameters).
        validate_all(context.config_loader["parameters"])

    @hook_impl(tryfirst=True)
    def before_node_run(self, inputs: dict[str, Any]) -> None:
        for key, value in list(inputs.items()):
            if key.startswith("params:") and isinstance(value, BaseModel):
                inputs[key] = value.model_dump(mode="json")
