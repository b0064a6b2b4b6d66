"""Pydantic's validation errors, said as our one-line messages.

Pydantic reports every failure with a location inside the input and a per-type message ("Input
should be a valid integer"; a Union field gets one line per member). Users of a Hydra override need
one line that names the full key, what it accepts and what it got, and a guess for a typo:

    specrollout.planner.max_k ... -> unknown key(s) under specrollout.planner: max_k; known: ...
    specrollout.max_k=99          -> specrollout.max_k must be an integer in [1, 16], got 99 (int)
    specrollout.enable="false"    -> ... must be true or false, got 'false' (str) (write enable=false unquoted: ...)

So we keep the location and the offending input from pydantic and word the rest from the key's
declaration (keys.KeySpec). Our own validators (tables, layer lists, rules between keys) raise
SpecRolloutConfigError already worded; pydantic carries it through and we hand it back unchanged.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Mapping

from pydantic import ValidationError

from verl_specrollout.config.keys import KeySpec, Rule, TYPE_WORDS, accepted_types, fields, is_section, spec_of
from verl_specrollout.errors import SpecRolloutConfigError

_UNKNOWN = ("extra_forbidden", "unexpected_keyword_argument")


def translate(exc: ValidationError, raw: Any, cls: type, prefix: str) -> SpecRolloutConfigError:
    """One SpecRolloutConfigError for a failed validation of `raw` as `cls` (named `prefix`)."""
    errors = exc.errors()
    # Unknown keys first, shallowest section first: a typo must be reported as a typo, not as the
    # default of the key that was meant.
    unknown = sorted((e for e in errors if e["type"] in _UNKNOWN), key=lambda e: len(e["loc"]))
    if unknown:
        loc = unknown[0]["loc"][:-1]
        section_cls, where, given = _walk(cls, prefix, raw, loc)
        return unknown_keys(section_cls, given, where)
    e = errors[0]
    ours = (e.get("ctx") or {}).get("error")
    if isinstance(ours, SpecRolloutConfigError):
        return ours
    section_cls, where, given, spec = _leaf(cls, prefix, raw, e)
    if spec is None and isinstance(given, Mapping):  # a mapping pydantic cannot take: keys that are not names
        return unknown_keys(section_cls, given, where)
    if spec is None:  # the section itself (or the top level) is not a mapping
        return SpecRolloutConfigError(
            f"{where} must be a mapping of its keys (or null for all defaults), got {describe(given)}")
    return bad_value(spec, given)


def _leaf(cls: type, prefix: str, raw: Any, error: dict):
    """(section class, full key, input value, KeySpec or None) for an error's location: the path is
    followed while it names fields; what follows (a Union member, a list index) is pydantic's."""
    where, given = prefix, raw
    for part in error["loc"]:
        info = fields(cls).get(part) if isinstance(part, str) else None
        if info is None:
            break
        given = given.get(part) if isinstance(given, Mapping) else error.get("input")
        if not is_section(info.annotation):
            return cls, f"{where}.{part}", given, spec_of(cls, part, where)
        cls, where = info.annotation, f"{where}.{part}"
    return cls, where, given, None


def _walk(cls: type, prefix: str, raw: Any, loc: tuple):
    where, given = prefix, raw
    for part in loc:
        info = fields(cls).get(part) if isinstance(part, str) else None
        if info is None or not is_section(info.annotation):
            break
        cls, where = info.annotation, f"{where}.{part}"
        given = given.get(part) if isinstance(given, Mapping) else {}
    return cls, where, given


def unknown_keys(cls: type, given: Mapping, where: str) -> SpecRolloutConfigError:
    names = list(fields(cls))
    unknown = sorted(str(k) for k in given if k not in names)
    hints = [f"{m[0]} for {u}" for u in unknown for m in [difflib.get_close_matches(u, names, n=1)] if m]
    guess = f" (did you mean {', '.join(hints)}?)" if hints else ""
    return SpecRolloutConfigError(
        f"unknown key(s) under {where}: {', '.join(unknown)}{guess}; known: {', '.join(sorted(names))}")


def bad_value(spec: KeySpec, value: Any) -> SpecRolloutConfigError:
    """The message for a value the key refuses (wrong type, out of range, not a choice, empty)."""
    where, rule = spec.key, spec.rule
    kinds, _ = accepted_types(spec.annotation)
    if rule.choices and kinds == (str,) and isinstance(value, str):
        return SpecRolloutConfigError(f"{where}={value!r} is not supported; choose one of {', '.join(rule.choices)}")
    msg = f"{where} must be {allowed(spec.annotation, rule)}, got {describe(value)}"
    if isinstance(value, str) and value.strip().lower() in ("true", "false") and bool in kinds:
        msg += f" (write {spec.name}={value.strip().lower()} unquoted: a quoted string is not a boolean)"
    elif float in kinds and _is_number(value) and not _finite(value):
        msg += " (not a finite number)"
    return SpecRolloutConfigError(msg)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except OverflowError:  # an int too large for a float
        return False


def describe(value: Any) -> str:
    """A value as an error message shows it: its repr (shortened) and its type."""
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


# ----------------------------------------------------------------------------- words (messages and docs)
def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def bounds_text(rule: Rule) -> str:
    """'>= 1', '> 0', 'in (0, 1]': one-sided bounds as comparisons, two-sided as an interval."""
    lower = f"[{_num(rule.ge)}" if rule.ge is not None else f"({_num(rule.gt)}" if rule.gt is not None else None
    upper = f"{_num(rule.le)}]" if rule.le is not None else f"{_num(rule.lt)})" if rule.lt is not None else None
    if lower and upper:
        return f"in {lower}, {upper}"
    if lower:
        return (">= " if lower[0] == "[" else "> ") + lower[1:]
    if upper:
        return ("<= " if upper[-1] == "]" else "< ") + upper[:-1]
    return ""


def _kind_phrase(kind: type, rule: Rule) -> str:
    """How one accepted type reads in an error message, with its constraint."""
    if kind is str and rule.choices:
        if len(rule.choices) == 1:
            return repr(rule.choices[0])
        return "one of " + ", ".join(rule.choices)
    words = TYPE_WORDS[kind]
    if rule.nonempty and kind in (str, list):
        words = words.replace("a ", "a non-empty ", 1)
    if kind is list and rule.text:
        words += f" of {rule.text}"
    if kind in (int, float) and bounds_text(rule):
        words += " " + bounds_text(rule)
    return words


def allowed(annotation: Any, rule: Rule) -> str:
    """What a key accepts, in words, e.g. 'an integer >= 1' or "'auto', an integer >= 0, or null"."""
    kinds, optional = accepted_types(annotation)
    parts = [_kind_phrase(k, rule) for k in kinds] + (["null"] if optional else [])
    if len(parts) <= 2:
        return " or ".join(parts)
    return ", ".join(parts[:-1]) + ", or " + parts[-1]
