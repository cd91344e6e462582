"""The base of every wire document: strict, closed and immutable.

Its own module so that a side importing only some documents (the agent's daemon needs
``registration.desired``, not registration's) does not build the others' models.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

#: Integers on the wire fit SQLite's (and most JSON readers') signed 64 bits.
INT64_MAX = 2**63 - 1
Int64 = Annotated[int, Field(ge=-(2**63), le=INT64_MAX)]
Count = Annotated[int, Field(ge=0, le=INT64_MAX)]


class Document(BaseModel):
    # No NaN or infinity in any float field: JSON has neither, and SQLite stores inf as-is.
    # Validators are built on first use: a side builds only the documents it uses, each
    # once, not every nested document again on its own (the agent's idle memory, issue 6).
    model_config = ConfigDict(
        strict=True, extra="forbid", frozen=True, allow_inf_nan=False, defer_build=True
    )
