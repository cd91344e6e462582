"""The base of every wire document: strict, closed and immutable.

Its own module so that a side importing only some documents (the agent's daemon needs
``registration.desired``, not registration's) does not build the others' models.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Document(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
