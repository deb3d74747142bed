"""The base of DEE's plan models (:mod:`dee.plans.model`, :mod:`dee.plans.schedule`)."""

from __future__ import annotations

from pydantic import ConfigDict
from pydantic.alias_generators import to_camel

from dee.plans.decoding import TolerantModel

__all__ = ["PlanModel"]


class PlanModel(TolerantModel):
    """Immutable, unknown fields refused, snake_case in Python and camelCase in documents."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )
