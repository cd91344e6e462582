"""The base of the typed rows that leave ``ops/``: frozen pydantic models.

A row model names its fields; columns it does not name are left behind (``extra="ignore"``),
so a secret column can never reach an HTTP answer by accident. The rows are also the answer
documents of the HTTP API: ``api/openapi.py`` generates the 2xx schemas from them, and each
states ``additionalProperties: false`` so that ``tests/edge_server/test_openapi.py``, which
validates live answers against the document, fails on a field the model does not name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from registration.desired import Condition, Spec, SpecPatch
from registration.protocol import LABELS_SCHEMA, Facts


class Row(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="ignore", json_schema_extra={"additionalProperties": False}
    )


@dataclass(frozen=True)
class StoredAs:
    """A JSON value the store keeps after ``model`` validated it on its way in (a device's
    facts and conditions, a spec, a spec patch). The row holds it as stored, so an answer is
    what was stored, not a second validation of it; the document states it as ``model``."""

    model: type[BaseModel]

    def __get_pydantic_json_schema__(
        self, stored: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = self.model.__pydantic_core_schema__
        if schema["type"] == "model":  # a reference to the model's component, not a copy
            schema = core_schema.definitions_schema(
                core_schema.definition_reference_schema(schema["ref"]), [schema]
            )
        return handler(schema)


FactsJson = Annotated[dict[str, Any], StoredAs(Facts)]
ConditionJson = Annotated[dict[str, Any], StoredAs(Condition)]
SpecJson = Annotated[dict[str, Any], StoredAs(Spec)]
SpecPatchJson = Annotated[dict[str, Any], StoredAs(SpecPatch)]
Labels = Annotated[dict[str, str], Field(json_schema_extra=LABELS_SCHEMA)]
LabelChanges = Annotated[  # an operator's labels: a value sets one, None removes one
    dict[str, str | None],
    Field(
        json_schema_extra={
            "propertyNames": LABELS_SCHEMA["propertyNames"],
            "additionalProperties": {
                "anyOf": [LABELS_SCHEMA["additionalProperties"], {"type": "null"}]
            },
        }
    ),
]
