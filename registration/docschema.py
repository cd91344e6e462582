"""The JSON Schema of wire documents (``registration.document``): what the server's OpenAPI
document states, the same rules the checker enforces (``tests/registration/test_document.py``
holds the two to each other, sample by sample). Apart from the checker, so that the agent,
which never states a schema, never loads it."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, Union

from registration.document import Document, FieldInfo, dumped, json_type


def json_schemas(
    classes: list[type[Document]], ref_template: str
) -> tuple[dict[type[Document], dict[str, Any]], dict[str, dict[str, Any]]]:
    """The JSON Schemas of ``classes`` and of every document they nest: a ``{"$ref": …}`` per
    class, and the schemas by class name (``ref_template`` makes a reference from a name)."""
    defs: dict[str, dict[str, Any]] = {}
    pending = list(classes)
    while pending:
        klass = pending.pop()
        if klass.__name__ not in defs:
            defs[klass.__name__] = _object_schema(klass, ref_template, pending)
    return {c: {"$ref": ref_template.format(model=c.__name__)} for c in classes}, defs


def inline_schema(cls: type[Document]) -> dict[str, Any]:
    """One schema with every nested document written out in place (no references)."""
    return _object_schema(cls, None, [])


def _object_schema(
    cls: type[Document], ref_template: str | None, pending: list[type[Document]]
) -> dict[str, Any]:
    properties = {}
    for name, field in cls._fields().items():
        schema = _schema(field.hint, ref_template, pending)
        _constrain(schema, field.info)
        if not field.required:
            default = field.default()
            schema["default"] = (
                default.model_dump() if isinstance(default, Document) else dumped(default, False)
            )
        properties[name] = schema
    out: dict[str, Any] = {"title": cls.__name__, "type": "object", "properties": properties}
    if cls.__doc__ and cls.__doc__ is not Document.__doc__:
        out["description"] = " ".join(cls.__doc__.split())
    required = [name for name, f in cls._fields().items() if f.required]
    if required:
        out["required"] = required
    out["additionalProperties"] = False
    return out


def _constrain(schema: dict[str, Any], info: FieldInfo) -> None:
    """Add a field's constraints to its schema: the bounds to each member of a union (as in
    ``str | None``) they apply to, the description and extras to the whole."""
    for member in schema.get("anyOf", [schema]):
        kind = member.get("type")
        if kind in ("integer", "number"):
            member.update(
                {k: v for k, v in (("minimum", info.ge), ("maximum", info.le)) if v is not None}
            )
        sized = {"string": "Length", "array": "Items", "object": "Properties"}.get(kind)
        if sized is not None:
            for bound, value in (("min", info.min_length), ("max", info.max_length)):
                if value is not None:
                    member[f"{bound}{sized}"] = value
        if kind == "string" and info.pattern is not None:
            member["pattern"] = info.pattern
    if info.description is not None:
        schema["description"] = info.description
    schema.update(info.json_schema_extra or {})


def _schema(hint: Any, ref_template: str | None, pending: list[type[Document]]) -> dict[str, Any]:
    if typing.get_origin(hint) is Annotated:
        inner, *metadata = typing.get_args(hint)
        schema = _schema(inner, ref_template, pending)
        for item in metadata:
            if isinstance(item, FieldInfo):
                _constrain(schema, item)
        return schema
    origin = typing.get_origin(hint)
    if hint is Any:
        return {}
    if hint is type(None) or hint is None:
        return {"type": "null"}
    if isinstance(hint, type) and issubclass(hint, Document):
        if ref_template is None:
            return inline_schema(hint)
        pending.append(hint)
        return {"$ref": ref_template.format(model=hint.__name__)}
    if hint in (str, int, float, bool):
        return {"type": json_type(hint)}
    if origin is Literal:
        allowed = list(typing.get_args(hint))
        kinds = {json_type(type(a)) for a in allowed}
        return {"enum": allowed, **({"type": kinds.pop()} if len(kinds) == 1 else {})}
    if origin is list:
        return {"type": "array", "items": _schema(typing.get_args(hint)[0], ref_template, pending)}
    if origin is dict:
        item = typing.get_args(hint)[1]
        return {"type": "object", "additionalProperties": _schema(item, ref_template, pending)}
    if origin in (Union, types.UnionType):
        return {"anyOf": [_schema(a, ref_template, pending) for a in typing.get_args(hint)]}
    raise TypeError(f"no JSON Schema for {hint!r}")
