"""The base of every parameter class: frozen, no unknown keys, and fields that must come from YAML."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def F(description: str, **bounds: Any) -> Any:
    """A required field with its description (and pydantic bounds such as ``ge=1``): no defaults, so
    ``conf/base/parameters_<stage>.yml`` stays the one place they live."""
    return Field(..., description=description, **bounds)
