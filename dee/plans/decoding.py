"""Reading models back from what an earlier release of DEE wrote.

DEE's models forbid unknown fields, so that a plan with a misspelt field is refused when it
is created. What a run carries through Temporal (its input with the whole plan version,
the inputs of its activities, the progress it continues as new with) was written by the
release that started it, though, and may outlive it: a later release that removes a field
would fail every workflow task of such a run, for ever, if it decoded that payload with
``extra="forbid"``. So DEE's data converter decodes payloads in the :data:`DECODING`
context, in which every :class:`TolerantModel` drops the fields it does not know. Everywhere
else (documents, the API, the builder) unknown fields are refused as before.

A field that only a *newer* release knows is dropped the same way: deploy workers before
the clients that start runs with plans using a new field.
"""

from __future__ import annotations

import functools
from typing import Any, Final

from pydantic import BaseModel, ValidationInfo, model_validator

__all__ = ["DECODING", "TolerantModel"]

#: The validation context in which :class:`TolerantModel` drops unknown fields.
DECODING: Final = {"dee": "decoding"}


class TolerantModel(BaseModel):
    """A model that refuses unknown fields (with ``extra="forbid"``), except when validated
    with ``context=DECODING``, when it drops them."""

    @model_validator(mode="before")
    @classmethod
    def _drop_unknown_when_decoding(cls, data: Any, info: ValidationInfo) -> Any:
        if info.context != DECODING or not isinstance(data, dict):
            return data
        known = _known_keys(cls)
        if known.issuperset(data):
            return data
        return {key: value for key, value in data.items() if key in known}


@functools.cache
def _known_keys(model: type[BaseModel]) -> frozenset[str]:
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        keys.add(name)
        for alias in (field.alias, field.validation_alias):
            if isinstance(alias, str):
                keys.add(alias)
    return frozenset(keys)
