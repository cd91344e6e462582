"""The base of every wire document: strict, closed and immutable, checked by code of our own.

A document class declares typed fields, as a dataclass would::

    class Disk(Document):
        name: Annotated[str, Field(max_length=256)]
        size_bytes: Count
        removable: bool = False

and :meth:`Document.model_validate` checks a decoded JSON value against them:

- **strict**: no coercion. A string is not a number, ``true`` is not ``1``; an integer is
  accepted where a float is wanted (JSON does not tell them apart). No NaN or infinity.
- **closed**: a key the class does not declare is refused.
- **immutable**: instances cannot be changed; :meth:`Document.model_copy` makes a new one.

The types a field may have: ``str``, ``int``, ``float``, ``bool``, ``None``, ``Any``,
``Literal[...]``, ``list[T]``, ``dict[str, T]``, unions (``T | None``), another document, and
``Annotated[T, Field(...)]`` for constraints. :func:`field_validator` (after the type check)
and :func:`model_validator` (``mode="before"``) add rules of the class's own.

Why not pydantic, which the first versions used: the agent is the long-running process of an
edge device, and pydantic was a quarter of its memory (about 9 MB of an idle agent's 40 MB,
issue 6: the library, its compiled core and the validators built from each model) to check a
dozen small documents. The names here (``model_validate``, ``model_dump``, ``Field``…) are
pydantic's, so code reads the same on both sides. The server's own answer models are still
pydantic models, and a document nests inside them through the hooks at the end of
:class:`Document`; the server's OpenAPI document uses ``registration.docschema``.
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union, dataclass_transform

#: Integers on the wire fit SQLite's (and most JSON readers') signed 64 bits.
INT64_MAX = 2**63 - 1


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


@dataclass(frozen=True)
class FieldInfo:
    """A field's default and constraints (made by :func:`Field`)."""

    default: Any = MISSING
    default_factory: Callable[[], Any] | None = None
    ge: int | float | None = None
    le: int | float | None = None
    min_length: int | None = None
    max_length: int | None = None
    #: A regular expression the whole string must match (Python ``re.fullmatch``, so a
    #: pattern anchored with ``^…$`` refuses a trailing newline as JSON Schema does).
    pattern: str | None = None
    json_schema_extra: dict[str, Any] | None = None
    description: str | None = None


def Field(  # noqa: N802 - pydantic's name, so the declarations read the same
    default: Any = MISSING,
    *,
    default_factory: Callable[[], Any] | None = None,
    ge: int | float | None = None,
    le: int | float | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    pattern: str | None = None,
    json_schema_extra: dict[str, Any] | None = None,
    description: str | None = None,
) -> Any:
    """A field's default and constraints, as a default value or in ``Annotated[T, ...]``."""
    return FieldInfo(
        default,
        default_factory,
        ge,
        le,
        min_length,
        max_length,
        pattern,
        json_schema_extra,
        description,
    )


Int64 = Annotated[int, Field(ge=-(2**63), le=INT64_MAX)]
Count = Annotated[int, Field(ge=0, le=INT64_MAX)]


class ValidationError(ValueError):
    """What was wrong with a document: each problem with where (``loc``) and what (``msg``)."""

    def __init__(self, title: str, problems: list[dict[str, Any]]) -> None:
        self._problems = problems
        # One line, for a log or the CLI: "invalid Disk: size_bytes: Field required; …".
        said = [f"{'.'.join(map(str, p['loc'])) or '(document)'}: {p['msg']}" for p in problems]
        super().__init__(f"invalid {title}: {'; '.join(said)}")

    def errors(self) -> list[dict[str, Any]]:
        return list(self._problems)

    def error_count(self) -> int:
        return len(self._problems)


class _Invalid(Exception):
    """Problems found below one value (internal: :class:`ValidationError` at the top)."""

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        self.problems = problems


def _fail(msg: str, kind: str, loc: tuple[Any, ...] = ()) -> _Invalid:
    return _Invalid([{"loc": loc, "msg": msg, "type": kind}])


def _within(problems: list[dict[str, Any]], where: Any) -> list[dict[str, Any]]:
    return [{**p, "loc": (where, *p["loc"])} for p in problems]


@dataclass(frozen=True)
class _Rule:
    """A class's own check: ``field_validator`` (after) or ``model_validator`` (before)."""

    function: Any  # a classmethod
    fields: tuple[str, ...] = ()


def field_validator(*fields: str) -> Callable[[Any], Any]:
    """Check (and maybe change) these fields' values after their types are checked. The
    decorated classmethod raises ``ValueError`` to refuse a value."""
    return lambda function: _Rule(function, fields)


def model_validator(*, mode: Literal["before"]) -> Callable[[Any], Any]:
    """Check the raw input (a dict, or an instance) before the fields are checked."""
    return lambda function: _Rule(function)


# A checker takes a value and returns it (maybe converted), or raises _Invalid.
Check = Callable[[Any], Any]


def json_type(kind: type) -> str:
    return {str: "string", int: "integer", float: "number", bool: "boolean"}[kind]


def _scalar(kind: type) -> Check:
    message = f"Input should be a valid {json_type(kind)}"
    if kind is float:

        def number(value: Any) -> Any:
            if type(value) is float:
                if math.isfinite(value):
                    return value
                raise _fail("Input should be a finite number", "finite_number")
            if type(value) is int:  # JSON does not tell 2 from 2.0
                return float(value)
            raise _fail(message, "float_type")

        return number

    def exact(value: Any) -> Any:
        # The type itself (bool is a subclass of int, and not a number on the wire), or a
        # subclass that is not bool (a str enum).
        if type(value) is kind or (isinstance(value, kind) and not isinstance(value, bool)):
            return value
        raise _fail(message, f"{kind.__name__}_type")

    return exact


def _size_error(
    value: str | list[Any] | dict[Any, Any], lo: int | None, hi: int | None
) -> _Invalid:
    what, unit = (
        ("String", "characters")
        if isinstance(value, str)
        else ("List", "items")
        if isinstance(value, list)
        else ("Dictionary", "items")
    )
    if lo is not None and len(value) < lo:
        return _fail(f"{what} should have at least {lo} {unit}", "too_short")
    return _fail(f"{what} should have at most {hi} {unit}", "too_long")


def _constrained(check: Check, info: FieldInfo) -> Check:
    ge, le, lo, hi = info.ge, info.le, info.min_length, info.max_length
    pattern = re.compile(info.pattern) if info.pattern is not None else None
    bounded, sized = ge is not None or le is not None, lo is not None or hi is not None
    if not bounded and not sized and pattern is None:
        return check

    def constrained(value: Any) -> Any:
        value = check(value)
        if bounded and isinstance(value, int | float) and not isinstance(value, bool):
            if ge is not None and value < ge:
                raise _fail(f"Input should be greater than or equal to {ge}", "greater_than_equal")
            if le is not None and value > le:
                raise _fail(f"Input should be less than or equal to {le}", "less_than_equal")
        if sized and isinstance(value, str | list | dict):
            if (lo is not None and len(value) < lo) or (hi is not None and len(value) > hi):
                raise _size_error(value, lo, hi)
        if pattern is not None and isinstance(value, str) and not pattern.fullmatch(value):
            raise _fail(f"String should match pattern '{pattern.pattern}'", "string_pattern")
        return value

    return constrained


def _each(kind: type[list[Any]] | type[dict[Any, Any]], key: Check, item: Check) -> Check:
    """A list (keys: the indexes) or a dict, each key and item checked; every problem kept."""
    message = f"Input should be a valid {'list' if kind is list else 'dictionary'}"

    def check(value: Any) -> Any:
        if not isinstance(value, kind):
            raise _fail(message, f"{kind.__name__}_type")
        pairs, problems = [], []
        for k, v in enumerate(value) if isinstance(value, list) else value.items():
            try:
                pairs.append((key(k), item(v)))
            except _Invalid as e:
                problems += _within(e.problems, k)
        if problems:
            raise _Invalid(problems)
        return [v for _, v in pairs] if kind is list else dict(pairs)

    return check


def _union(members: list[Check], optional: bool) -> Check:
    if optional and len(members) == 1:  # T | None, nearly every union
        (member,) = members
        return lambda value: None if value is None else member(value)

    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        problems: list[dict[str, Any]] = []
        for member in members:
            try:
                return member(value)
            except _Invalid as e:
                problems = e.problems
        raise _Invalid(problems or [{"loc": (), "msg": "Input should be None", "type": "none"}])

    return check


def _literal(allowed: tuple[Any, ...]) -> Check:
    words = " or ".join(repr(a) for a in allowed)
    exact = frozenset((type(a), a) for a in allowed)  # True is not 1, nor 1.0 is 1

    def check(value: Any) -> Any:
        try:
            if (type(value), value) in exact:
                return value
        except TypeError:  # unhashable: a list, a dict
            pass
        raise _fail(f"Input should be {words}", "literal_error")

    return check


def _checker(hint: Any) -> Check:
    """The checker of a type hint."""
    if typing.get_origin(hint) is Annotated:
        hint, *metadata = typing.get_args(hint)
        check = _checker(hint)
        for item in metadata:  # Annotated[Annotated[int, Field(le=…)], Field(ge=1)]: both
            if isinstance(item, FieldInfo):
                check = _constrained(check, item)
        return check
    origin = typing.get_origin(hint)
    if hint is Any:
        return lambda value: value
    if hint is type(None) or hint is None:
        return _union([], optional=True)
    if isinstance(hint, type) and issubclass(hint, Document):
        return hint._check
    if hint in (str, int, float, bool):
        return _scalar(hint)
    if origin is Literal:
        return _literal(typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return _each(list, lambda index: index, _checker(item))
    if origin is dict:
        key, item = typing.get_args(hint)
        return _each(dict, _checker(key), _checker(item))
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        members = [_checker(a) for a in args if a is not type(None)]
        return _union(members, optional=type(None) in args)
    raise TypeError(f"a document field cannot be of type {hint!r}")


@dataclass(frozen=True)
class _Field:
    name: str
    hint: Any
    info: FieldInfo
    check: Check

    @property
    def required(self) -> bool:
        return self.info.default is MISSING and self.info.default_factory is None

    def default(self) -> Any:
        if self.info.default_factory is not None:
            return self.info.default_factory()
        return self.info.default


def _then(check: Check, validators: list[Callable[[Any], Any]]) -> Check:
    """``check``, then a class's own validators of the field (``ValueError`` refuses)."""

    def checked(value: Any) -> Any:
        value = check(value)
        for validator in validators:
            try:
                value = validator(value)
            except ValueError as e:
                raise _fail(f"Value error, {e}", "value_error") from None
        return value

    return checked


def _info_of(name: str, declared: Any) -> FieldInfo:
    """The field's default and constraints: ``= Field(...)``, ``= value`` or none."""
    if isinstance(declared, FieldInfo):
        return declared
    if isinstance(declared, list | dict | set):  # one object, shared by every instance
        raise TypeError(f"field {name}: a mutable default needs Field(default_factory=...)")
    return FieldInfo(default=declared)


_D = TypeVar("_D", bound="Document")


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(Field,))
class Document:
    """A strict, closed, immutable JSON document (see the module's docstring)."""

    # Built at a class's first use, not its definition: a side builds only what it uses.
    __fields: ClassVar[dict[str, _Field] | None] = None
    __before: ClassVar[tuple[Any, ...]] = ()

    def __init__(self, **values: Any) -> None:
        checked = type(self)._checked(values)
        object.__setattr__(self, "__dict__", checked)

    # -- the class's fields, built once ---------------------------------------------------------
    @classmethod
    def _fields(cls) -> dict[str, _Field]:
        fields = cls.__dict__.get("_Document__fields")
        if fields is None:
            fields = cls._build()
        return fields

    @classmethod
    def _build(cls) -> dict[str, _Field]:
        hints = typing.get_type_hints(cls, include_extras=True)
        rules = {
            name: value
            for klass in reversed(cls.__mro__)
            for name, value in vars(klass).items()
            if isinstance(value, _Rule)
        }
        fields: dict[str, _Field] = {}
        for name, hint in hints.items():
            if name.startswith("_") or typing.get_origin(hint) is ClassVar:
                continue
            info = _info_of(name, getattr(cls, name, MISSING))
            check = _constrained(_checker(hint), info)
            after = [r.function.__get__(None, cls) for r in rules.values() if name in r.fields]
            fields[name] = _Field(name, hint, info, _then(check, after) if after else check)
        cls.__before = tuple(r.function for r in rules.values() if not r.fields)
        cls.__fields = fields
        return fields

    @classmethod
    def _checked(cls, data: Any) -> dict[str, Any]:
        """The checked values of the fields, from a dict; raises :class:`ValidationError`."""
        try:
            return cls._values(data)
        except _Invalid as e:
            raise ValidationError(cls.__name__, e.problems) from None

    @classmethod
    def _values(cls, data: Any) -> dict[str, Any]:
        fields = cls._fields()
        for before in cls.__before:
            try:
                data = before.__get__(None, cls)(data)
            except ValueError as e:
                raise _fail(f"Value error, {e}", "value_error") from None
        if not isinstance(data, dict):
            raise _fail(
                f"Input should be a valid dictionary or instance of {cls.__name__}", "model_type"
            )
        problems: list[dict[str, Any]] = []
        values: dict[str, Any] = {}
        found = 0
        for name, field in fields.items():
            if name not in data:
                if field.required:
                    problems.append({"loc": (name,), "msg": "Field required", "type": "missing"})
                else:
                    values[name] = field.default()
                continue
            found += 1
            try:
                values[name] = field.check(data[name])
            except _Invalid as e:
                problems += _within(e.problems, name)
        if found < len(data):
            problems += [
                {"loc": (key,), "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}
                for key in data
                if key not in fields
            ]
        if problems:
            raise _Invalid(problems)
        return values

    @classmethod
    def _check(cls, value: Any) -> Any:
        """A nested document: an instance as it is, or a dict checked."""
        if isinstance(value, cls):
            return value
        instance = cls.__new__(cls)
        object.__setattr__(instance, "__dict__", cls._values(value))
        return instance

    # -- pydantic's names -----------------------------------------------------------------------
    @classmethod
    def model_validate(cls: type[_D], data: Any) -> _D:
        """Check a decoded JSON value (or take an instance as it is)."""
        try:
            return cls._check(data)  # type: ignore[no-any-return]
        except _Invalid as e:
            raise ValidationError(cls.__name__, e.problems) from None

    @classmethod
    def model_validate_json(cls: type[_D], data: str | bytes | bytearray) -> _D:
        """Decode JSON (strict numbers, see ``registration.protocol.loads``) and check it."""
        from registration.protocol import InvalidJson, loads

        try:
            decoded = loads(data)
        except InvalidJson as e:
            raise ValidationError(
                cls.__name__, [{"loc": (), "msg": str(e), "type": "json_invalid"}]
            ) from None
        return cls.model_validate(decoded)

    def model_dump(self, *, mode: str = "python", exclude_none: bool = False) -> dict[str, Any]:
        """The document as a dict of JSON values (``mode`` is accepted for pydantic's callers:
        a document holds only JSON values, so both modes give the same)."""
        return {
            name: dumped(value, exclude_none)
            for name, value in self.__dict__.items()
            if not (exclude_none and value is None)
        }

    def model_dump_json(self) -> str:
        """Compact JSON, UTF-8 as it is (not ``\\u`` escapes), fields in declared order."""
        return json.dumps(self.model_dump(), ensure_ascii=False, separators=(",", ":"))

    def model_copy(self: _D, *, update: dict[str, Any] | None = None) -> _D:
        """A copy with some fields replaced. Like pydantic, the new values are not checked:
        for values of the document's own making, never for input."""
        copy = type(self).__new__(type(self))
        object.__setattr__(copy, "__dict__", {**self.__dict__, **(update or {})})
        return copy

    @classmethod
    def model_json_schema(cls) -> dict[str, Any]:
        """The JSON Schema of this document, the documents it nests under ``$defs``."""
        from registration.docschema import json_schemas  # the server's: the agent never asks

        refs, defs = json_schemas([cls], "#/$defs/{model}")
        return {**defs.pop(cls.__name__), **({"$defs": defs} if defs else {})}

    # -- an immutable value ---------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        raise TypeError(f"{type(self).__name__} is immutable: use model_copy(update=...)")

    def __delattr__(self, name: str) -> None:
        raise TypeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((type(self), *self.__dict__.values()))

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(self.__dict__.items())

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"{type(self).__name__}({shown})"

    # -- inside the server's pydantic models ----------------------------------------------------
    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> dict[str, Any]:
        """Checked by :meth:`model_validate`, written by :meth:`model_dump`. The schema is
        pydantic-core's plain-function schema, spelled as the dict its ``core_schema`` helpers
        build, so that this module never imports pydantic (tested with a pydantic model)."""

        def check(value: Any) -> Any:
            try:
                return cls._check(value)
            except _Invalid as e:  # pydantic reports a ValueError as "Value error, …"
                raise ValidationError(cls.__name__, e.problems) from None

        def dump(document: Document) -> dict[str, Any]:
            return document.model_dump()

        return {
            "type": "function-plain",
            "function": {"type": "no-info", "function": check},
            "serialization": {"type": "function-plain", "function": dump},
        }

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        from registration.docschema import inline_schema

        return inline_schema(cls)


def dumped(value: Any, exclude_none: bool) -> Any:
    if isinstance(value, Document):
        return value.model_dump(exclude_none=exclude_none)
    if isinstance(value, list):
        return [dumped(v, exclude_none) for v in value]
    if isinstance(value, dict):
        return {k: dumped(v, exclude_none) for k, v in value.items()}
    return value
