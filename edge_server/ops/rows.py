"""The base of the typed rows that leave ``ops/``: frozen pydantic models.

A row model names its fields; columns it does not name are left behind (``extra="ignore"``),
so a secret column can never reach an HTTP answer by accident.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Row(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
