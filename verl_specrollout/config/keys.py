"""How a key is declared (`key`, `section`) and read back: its full name, type, default, description
and constraint (`KeySpec`), for the error messages (messages.py), the generated reference (docs.py)
and the tests that fuzz every key.

Pydantic holds the constraints (`Literal` choices, `Field(ge=...)`, `min_length`); `Rule` is the same
facts collected into one flat record, because messages and docs word them per key ("an integer in
[1, 16]") where pydantic's own messages are per type ("Input should be greater than or equal to 1").
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from typing import Any, Optional, Union

from pydantic import Field
from pydantic.dataclasses import is_pydantic_dataclass
from pydantic_core import PydanticUndefined

ROOT = "specrollout"


def key(default: Any, doc: str, *, example: Any = None, text: str = "", **constraints: Any) -> Any:
    """A config key: its default, what it does, an example (for the docs), and pydantic constraints
    (`ge`, `gt`, `le`, `lt`, `min_length`). `text` says in words what a validator of a structured
    value (a list) checks, for the docs and the messages."""
    extra = {"constraint": text} if text else None
    examples = [example] if example is not None else None
    return Field(default, description=doc, examples=examples, json_schema_extra=extra, **constraints)


def section(cls: type, doc: str) -> Any:
    """A nested block of keys (null in the input means all its defaults)."""
    return Field(default_factory=cls, description=doc)


@dataclass(frozen=True)
class Rule:
    """What one key accepts beyond its type: bounds for numbers, `choices` for strings, `nonempty`
    for strings and lists, `text` for what a list's validator checks."""

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    choices: tuple = ()
    nonempty: bool = False
    text: str = ""


@dataclass(frozen=True)
class KeySpec:
    """One leaf key as declared. `annotation` is the plain type (Literal -> str, Strict/Annotated
    stripped): what the value may be, as messages, docs and the fuzz test read it."""

    key: str  # full dotted name, e.g. specrollout.planner.max_k
    name: str
    annotation: Any
    default: Any
    doc: str
    example: Any
    rule: Rule


def is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and is_pydantic_dataclass(annotation)


def fields(cls: type) -> dict:
    """name -> pydantic FieldInfo, in declaration order."""
    return {f.name: cls.__pydantic_fields__[f.name] for f in dataclasses.fields(cls)}


@functools.lru_cache(maxsize=None)
def spec_of(cls: type, name: str, prefix: str) -> KeySpec:
    info = cls.__pydantic_fields__[name]
    found: dict = {}
    _collect(info.annotation, info.metadata, found)
    rule = Rule(ge=found.get("ge"), gt=found.get("gt"), le=found.get("le"), lt=found.get("lt"),
                choices=tuple(found.get("choices", ())), nonempty=bool(found.get("min_length")),
                text=(info.json_schema_extra or {}).get("constraint", ""))
    default = None if info.default is PydanticUndefined else info.default
    example = info.examples[0] if info.examples else None
    return KeySpec(f"{prefix}.{name}", name, plain_type(info.annotation), default, info.description or "",
                   example, rule)


def _collect(annotation: Any, metadata: list, found: dict) -> None:
    """Bounds, length and Literal choices, wherever the declaration put them (on the field, or on
    one member of a Union such as `Literal["auto"] | Annotated[int, Field(ge=0)]`)."""
    for m in metadata:
        for attr in ("ge", "gt", "le", "lt", "min_length"):
            if getattr(m, attr, None) is not None:
                found[attr] = getattr(m, attr)
        if hasattr(m, "metadata") and isinstance(m.metadata, list):  # a FieldInfo inside Annotated
            _collect(None, m.metadata, found)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        found.setdefault("choices", []).extend(typing.get_args(annotation))
    elif origin is typing.Annotated:
        args = typing.get_args(annotation)
        _collect(args[0], list(args[1:]), found)
    elif origin is Union:
        for a in typing.get_args(annotation):
            _collect(a, [], found)


def plain_type(annotation: Any) -> Any:
    """bool, int, float, str, list, or a Union of them with None."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return plain_type(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return str
    if origin is list:
        return list
    if origin is Union:
        return Union[tuple(plain_type(a) for a in typing.get_args(annotation))]
    return annotation


def iter_keys(cls: Optional[type] = None, prefix: str = ROOT):
    """(full key, KeySpec, plain type) for every leaf key, sections expanded, in declaration order."""
    if cls is None:
        from verl_specrollout.config.schema import SpecRolloutConfig

        cls = SpecRolloutConfig
    for name, info in fields(cls).items():
        if is_section(info.annotation):
            yield from iter_keys(info.annotation, f"{prefix}.{name}")
        else:
            spec = spec_of(cls, name, prefix)
            yield spec.key, spec, spec.annotation


def iter_sections(cls: Optional[type] = None, prefix: str = ROOT):
    """(full key, section class) for the top level and every nested section."""
    if cls is None:
        from verl_specrollout.config.schema import SpecRolloutConfig

        cls = SpecRolloutConfig
    yield prefix, cls
    for name, info in fields(cls).items():
        if is_section(info.annotation):
            yield from iter_sections(info.annotation, f"{prefix}.{name}")


# How each supported type reads in messages and in the docs; the order is the order they are listed in.
TYPE_WORDS = {bool: "true or false", str: "a string", int: "an integer", float: "a number", list: "a list"}
TYPE_NAMES = {bool: "bool", str: "str", int: "int", float: "float", list: "list"}


def accepted_types(annotation: Any) -> tuple:
    """(types a value may have, whether null is allowed) for a plain annotation."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) is Union else (annotation,)
    # A fixed order: typing caches Union[int, str] and Union[str, int] as one object, so the
    # annotation's own order depends on what was imported first.
    kinds = sorted((a for a in args if a is not type(None)), key=list(TYPE_WORDS).index)
    return tuple(kinds), type(None) in args
