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
from pydantic_core import CoreSchema

from registration.desired import Condition, Spec, SpecPatch
from registration.document import Document
from registration.protocol import LABELS_SCHEMA, Facts


class Row(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="ignore", json_schema_extra={"additionalProperties": False}
    )


#: Where the OpenAPI document keeps the schemas of the documents rows refer to.
DOCUMENT_REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class StoredAs:
    """A JSON value the store keeps after ``model`` validated it on its way in (a device's
    facts and conditions, a spec, a spec patch). The row holds it as stored, so an answer is
    what was stored, not a second validation of it; the document states it as ``model``, by
    reference (``api/openapi.py`` adds the schemas of :data:`STORED`)."""

    model: type[Document]

    def __get_pydantic_json_schema__(
        self, stored: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # In allOf: pydantic resolves a bare "$ref" among its own models, to merge a field's
        # description into it, and this one is not among them.
        return {"allOf": [{"$ref": DOCUMENT_REF.format(model=self.model.__name__)}]}


FactsJson = Annotated[dict[str, Any], StoredAs(Facts)]
ConditionJson = Annotated[dict[str, Any], StoredAs(Condition)]
SpecJson = Annotated[dict[str, Any], StoredAs(Spec)]
SpecPatchJson = Annotated[dict[str, Any], StoredAs(SpecPatch)]
STORED: tuple[type[Document], ...] = (Facts, Condition, Spec, SpecPatch)
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
