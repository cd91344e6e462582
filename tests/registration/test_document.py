"""The wire documents' own checker (``registration.document``): strict, closed, immutable, and
its JSON Schema says what the checker enforces."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import jsonschema
import pydantic
import pytest

from registration.desired import SpecDocument, SpecPatch, StatusEvent
from registration.document import Count, Document, Field, ValidationError, field_validator
from registration.document import model_validator as before_validator
from registration.protocol import Facts, LabelPatch, TokenCreate


class Part(Document):
    name: Annotated[str, Field(max_length=8, pattern=r"^[a-z]+$")]
    size: Count = 0


class Whole(Document):
    kind: Literal["a", "b"]
    ratio: float = 1.0
    flag: bool = False
    parts: list[Part] = Field(default_factory=list, max_length=2)
    tags: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    note: str | None = Field(default=None, max_length=4)
    seq: Annotated[Count, Field(ge=1)] = 1
    anything: Any = None

    @field_validator("note")
    @classmethod
    def _no_x(cls, v: str | None) -> str | None:
        if v is not None and "x" in v:
            raise ValueError("no x in a note")
        return v

    @before_validator(mode="before")
    @classmethod
    def _no_legacy(cls, data: Any) -> Any:
        if isinstance(data, dict) and "legacy" in data:
            raise ValueError("legacy is gone")
        return data


def problems(model: type[Document], data: Any) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as e:
        model.model_validate(data)
    assert isinstance(e.value, ValueError)
    return [(p["loc"], p["msg"]) for p in e.value.errors()]


def test_valid_input_gives_typed_values_and_defaults() -> None:
    w = Whole.model_validate({"kind": "a", "ratio": 2, "parts": [{"name": "ab"}], "tags": {"t": 3}})
    assert w.ratio == 2.0 and isinstance(w.ratio, float)  # JSON does not tell 2 from 2.0
    assert w.parts == [Part(name="ab", size=0)]
    assert (w.flag, w.note, w.seq, w.tags) == (False, None, 1, {"t": 3})
    assert Whole.model_validate(w) is w  # an instance is taken as it is


@pytest.mark.parametrize(
    ("data", "where", "words"),
    [
        ({}, ("kind",), "Field required"),
        ({"kind": "c"}, ("kind",), "Input should be 'a' or 'b'"),
        ({"kind": ["a"]}, ("kind",), "Input should be 'a' or 'b'"),
        ({"kind": "a", "extra": 1}, ("extra",), "Extra inputs are not permitted"),
        ({"kind": "a", "flag": 1}, ("flag",), "valid boolean"),
        ({"kind": "a", "seq": True}, ("seq",), "valid integer"),  # a bool is not a number
        ({"kind": "a", "seq": "1"}, ("seq",), "valid integer"),  # nor is a string
        ({"kind": "a", "seq": 1.0}, ("seq",), "valid integer"),
        ({"kind": "a", "seq": 0}, ("seq",), "greater than or equal to 1"),
        ({"kind": "a", "seq": 2**63}, ("seq",), "less than or equal to"),  # both Fields hold
        ({"kind": "a", "ratio": float("nan")}, ("ratio",), "finite number"),
        ({"kind": "a", "ratio": float("inf")}, ("ratio",), "finite number"),
        ({"kind": "a", "ratio": "1"}, ("ratio",), "valid number"),
        ({"kind": "a", "parts": {}}, ("parts",), "valid list"),
        ({"kind": "a", "parts": [{"name": "a"}] * 3}, ("parts",), "at most 2 items"),
        ({"kind": "a", "parts": [{"name": "a"}, {"name": "A"}]}, ("parts", 1, "name"), "pattern"),
        ({"kind": "a", "parts": [{"name": "abc\n"}]}, ("parts", 0, "name"), "pattern"),
        ({"kind": "a", "parts": [{"name": "a" * 9}]}, ("parts", 0, "name"), "at most 8"),
        ({"kind": "a", "parts": ["a"]}, ("parts", 0), "valid dictionary or instance of Part"),
        ({"kind": "a", "tags": {"t": 0}}, ("tags", "t"), "greater than or equal to 1"),
        ({"kind": "a", "tags": []}, ("tags",), "valid dictionary"),
        ({"kind": "a", "note": 5}, ("note",), "valid string"),
        ({"kind": "a", "note": "toolong"}, ("note",), "at most 4 characters"),
        ({"kind": "a", "note": "x"}, ("note",), "Value error, no x in a note"),
        ({"kind": "a", "legacy": 1}, (), "Value error, legacy is gone"),
        ([], (), "valid dictionary or instance of Whole"),
    ],
)
def test_each_kind_of_bad_input_is_refused_where_it_is(
    data: Any, where: tuple[Any, ...], words: str
) -> None:
    found = problems(Whole, data)
    assert found[0][0] == where and words in found[0][1], found


def test_every_problem_is_reported_not_only_the_first() -> None:
    found = problems(Whole, {"kind": "z", "flag": "no", "surplus": 1})
    assert {loc for loc, _ in found} == {("kind",), ("flag",), ("surplus",)}


def test_documents_are_immutable_values() -> None:
    p = Part(name="ab")
    with pytest.raises(TypeError):
        p.name = "cd"  # type: ignore[misc]
    with pytest.raises(TypeError):
        del p.name  # type: ignore[misc]
    assert p == Part(name="ab") and hash(p) == hash(Part(name="ab"))
    assert p != Part(name="ab", size=1)
    q = p.model_copy(update={"size": 5})
    assert (p.size, q.size, q.name) == (0, 5, "ab")
    assert dict(q) == {"name": "ab", "size": 5}
    with pytest.raises(ValidationError):
        Part(name="ab", size=-1)  # the constructor checks too


def test_dumps_are_json_in_declared_order() -> None:
    w = Whole(kind="b", parts=[Part(name="ab")], note=None, anything={"k": ["é"]})
    assert w.model_dump()["parts"] == [{"name": "ab", "size": 0}]
    assert "note" not in w.model_dump(exclude_none=True)
    text = w.model_dump_json()
    assert text.startswith('{"kind":"b","ratio":1.0,"flag":false,"parts":[{"name":"ab","size":0}]')
    assert text.endswith('"anything":{"k":["é"]}}')
    assert Whole.model_validate_json(text) == w
    labels = LabelPatch(labels={"a": None, "b": "x"})  # None in a dict is a value, kept
    assert labels.model_dump(exclude_none=True) == {"labels": {"a": None, "b": "x"}}


def test_json_decoding_is_as_strict_as_the_api() -> None:
    for text in ('{"seq": 1, "observed_generation": 0, "at": NaN}', "[" * 100 + "]" * 100, "{"):
        with pytest.raises(ValidationError):
            StatusEvent.model_validate_json(text)


SAMPLES: list[tuple[type[Document], Any]] = [
    (Whole, {"kind": "a", "parts": [{"name": "ab", "size": 3}], "tags": {"t": 1}, "note": "ok"}),
    (Whole, {"kind": "a", "parts": [{"name": "AB"}]}),
    (Whole, {"kind": "a", "note": "toolong"}),
    (Whole, {"kind": "a", "seq": 0}),
    (Whole, {"kind": "a", "seq": True}),
    (Whole, {"kind": "a", "surplus": 1}),
    (Whole, {"ratio": 1}),
    (TokenCreate, {"group": "edge", "labels": {"site": "${hostname}"}, "max_uses": 5}),
    (TokenCreate, {"group": "..", "max_uses": 5}),
    (TokenCreate, {"ttl_seconds": 0}),
    (TokenCreate, {"labels": {"bad key!": "x"}}),
    (SpecPatch, {"os": {"version": "2"}, "config": [{"path": "/etc/a", "mode": 384}]}),
    (SpecPatch, {"config": [{"path": "relative"}]}),
    (SpecPatch, {"bundles": [{"name": "Web"}]}),
    (SpecDocument, {"device_id": "d", "generation": 1, "spec": {}}),
    (SpecDocument, {"device_id": "d", "generation": -1, "spec": {}}),
    (Facts, {"hostname": "h", "cpu": {"count": 2}, "disks": [{"name": "sda", "size_bytes": 1}]}),
    (Facts, {"cpu": {"count": 70000}}),
]


@pytest.mark.parametrize(("model", "data"), SAMPLES)
def test_the_json_schema_agrees_with_the_checker(model: type[Document], data: Any) -> None:
    """What the OpenAPI document tells clients is what the server enforces, sample by sample
    (the field validators' rules that JSON Schema can state are in the schema too)."""
    schema = model.model_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    schema_ok = jsonschema.Draft202012Validator(schema).is_valid(data)
    try:
        model.model_validate(data)
        checker_ok = True
    except ValidationError:
        checker_ok = False
    assert schema_ok == checker_ok, (schema_ok, checker_ok)


def test_a_document_nests_in_the_servers_pydantic_models() -> None:
    class Answer(pydantic.BaseModel):
        part: Part
        parts: list[Part] = []

    a = Answer.model_validate({"part": {"name": "ab"}, "parts": [Part(name="c")]})
    assert a.part == Part(name="ab") and a.parts == [Part(name="c")]
    assert a.model_dump(mode="json") == {
        "part": {"name": "ab", "size": 0},
        "parts": [{"name": "c", "size": 0}],
    }
    assert a.model_dump_json() == '{"part":{"name":"ab","size":0},"parts":[{"name":"c","size":0}]}'
    with pytest.raises(pydantic.ValidationError, match="at most 8 characters"):
        Answer.model_validate({"part": {"name": "abcdefghij"}})
    schema = Answer.model_json_schema()["properties"]["part"]
    assert schema["properties"]["name"]["maxLength"] == 8


def test_a_shared_mutable_default_is_refused_when_the_class_is_first_used() -> None:
    class Shared(Document):
        items: list[int] = []  # noqa: RUF012 - the mistake under test

    with pytest.raises(TypeError, match="default_factory"):
        Shared()
