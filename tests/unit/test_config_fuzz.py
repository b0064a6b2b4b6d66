"""Config fuzz: every declared key gets wrong types, out-of-range values and its valid values.

Driven by the declarations in verl_specrollout/config/schema.py (type annotation + `key(...)` constraints),
so a key added there is covered here without edits. The test reads the annotations itself
to decide which sample values have the wrong type, rather than asking the code under test.
"""

import json
import math
import typing

import pytest

from verl_specrollout.config import SpecRolloutConfig, SpecRolloutConfigError, iter_keys, iter_sections

KEYS = list(iter_keys())
SECTIONS = [(name, cls) for name, cls in iter_sections() if "." in name]  # nested ones

# One sample of each shape a Hydra override, a YAML file or Python code can deliver.
SAMPLES = ["x", "", "true", "false", "1", "0.5", "null", 0, 1, -1, 2.0, 1.5, 0.0, True, False, None,
           [], [1], ["x"], (1,), {}, {"a": 1}]


def _kinds(annotation):
    """(types, null allowed) read from the annotation: X, Optional[X], Optional[Union[X, Y]]."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Union else (annotation,)
    return [a for a in args if a is not type(None)], type(None) in args


def _fits(value, annotation) -> bool:
    """The typing policy as documented: strict bools and ints, ints allowed for floats."""
    kinds, optional = _kinds(annotation)
    if value is None:
        return optional
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int):
        return int in kinds or float in kinds
    if isinstance(value, float):
        return float in kinds
    if isinstance(value, (list, tuple)):
        return list in kinds
    return isinstance(value, str) and str in kinds


def _nest(key: str, value) -> dict:
    """'specrollout.planner.mode', v -> {'planner': {'mode': v}}."""
    out = value
    for part in reversed(key.split(".")[1:]):
        out = {part: out}
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and v else v
    return out


def _read(cfg, key: str):
    for part in key.split(".")[1:]:
        cfg = getattr(cfg, part)
    return cfg


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Speculation off, and on with a real (tiny) draft checkpoint so only the fuzzed key can fail."""
    draft = tmp_path_factory.mktemp("draft")
    (draft / "config.json").write_text(json.dumps({"vocab_size": 100}))
    on = {"enable": True, "method": "eagle3", "draft_path": str(draft)}
    return {"off": {"method": "eagle3", "draft_path": str(draft)}, "on": on}


def _assert_refused(raw: dict, key: str, value, why: str) -> None:
    try:
        SpecRolloutConfig.from_dict(raw).validate()
    except SpecRolloutConfigError as exc:
        assert key in str(exc), f"{key}={value!r} ({why}): message does not name the key: {exc}"
        return
    except Exception as exc:  # any other exception is a bug: the user gets a traceback, not the fix
        pytest.fail(f"{key}={value!r} ({why}) raised {type(exc).__name__}: {exc}")
    pytest.fail(f"{key}={value!r} ({why}) was accepted")


def _out_of_range(annotation, rule) -> list:
    """Values of the right type that the declared rule refuses."""
    kinds, _ = _kinds(annotation)
    step = 1 if int in kinds else 1e-6
    values = []
    if int in kinds or float in kinds:
        values += [rule.ge - step] if rule.ge is not None else []
        values += [rule.gt] if rule.gt is not None else []
        values += [rule.le + step] if rule.le is not None else []
        values += [rule.lt] if rule.lt is not None else []
    if int in kinds:
        values = [int(v) for v in values]
    if float in kinds:
        # an int at an excluded bound goes through the same range check
        values += [int(v) for v in values if float(v).is_integer()]
        values += [math.nan, math.inf, -math.inf, 10 ** 400]
    if str in kinds and rule.choices:
        values += ["no-such-choice", rule.choices[0].upper() + "_"]
    if str in kinds and rule.nonempty:
        values.append("")
    if list in kinds:
        values += [[None], [[]], [{}]] + ([[]] if rule.nonempty else [])
    return values


def _valid(f, annotation, rule) -> list:
    """Values the declaration says are fine: default, null, example, choices, bounds reached from inside."""
    kinds, optional = _kinds(annotation)
    values = [f.default]
    values += [None] if optional else []
    values += [f.example] if f.example is not None else []
    values += [True, False] if bool in kinds else []
    values += list(rule.choices)
    if str in kinds and not rule.choices:
        values.append("some/value")
    if int in kinds or float in kinds:
        step = 1 if int in kinds else 1e-6
        values += [rule.ge] if rule.ge is not None else []
        values += [rule.gt + step] if rule.gt is not None else []
        values += [rule.le] if rule.le is not None else []
        values += [rule.lt - step] if rule.lt is not None else []
    if int in kinds:
        values = [int(v) if isinstance(v, float) else v for v in values]
    if float in kinds:
        values += [i for i in (0, 1, 2) if _inside(rule, i)]  # Hydra gives `lr=1` as an int
    return values


def _inside(rule, x) -> bool:
    return ((rule.ge is None or x >= rule.ge) and (rule.gt is None or x > rule.gt)
            and (rule.le is None or x <= rule.le) and (rule.lt is None or x < rule.lt))


def test_every_key_is_declared():
    for key, f, _ in KEYS:
        assert f.doc, f"{key} has no description: declare it with key(default, doc, ...)"
        assert f.rule is not None, key
    SpecRolloutConfig().validate()  # the defaults satisfy their own rules


@pytest.mark.parametrize("base", ["off", "on"])
@pytest.mark.parametrize("key, f, annotation", KEYS, ids=[k for k, _, _ in KEYS])
def test_wrong_types_are_refused(bases, base, key, f, annotation):
    wrong = [v for v in SAMPLES if not _fits(v, annotation)]
    assert wrong, key
    for value in wrong:
        _assert_refused(_merge(bases[base], _nest(key, value)), key, value, "wrong type")


@pytest.mark.parametrize("base", ["off", "on"])
@pytest.mark.parametrize("key, f, annotation", KEYS, ids=[k for k, _, _ in KEYS])
def test_out_of_range_values_are_refused(bases, base, key, f, annotation):
    for value in _out_of_range(annotation, f.rule):
        _assert_refused(_merge(bases[base], _nest(key, value)), key, value, "out of range")


@pytest.mark.parametrize("key, f, annotation", KEYS, ids=[k for k, _, _ in KEYS])
def test_valid_values_are_accepted(bases, key, f, annotation):
    for value in _valid(f, annotation, f.rule):
        try:
            cfg = SpecRolloutConfig.from_dict(_merge(bases["off"], _nest(key, value))).validate()
        except SpecRolloutConfigError as exc:
            pytest.fail(f"{key}={value!r} is valid but was refused: {exc}")
        stored = _read(cfg, key)
        assert stored == value, (key, value, stored)
        if float in _kinds(annotation)[0] and isinstance(value, (int, float)):
            assert type(stored) is float, (key, value, stored)  # an int for a float key is stored as float


@pytest.mark.parametrize("key", ["enable", "learner.enable", "skip_vocab_check", "planner.skip_draft_at_k0"])
@pytest.mark.parametrize("text", ["true", "false", "True", "1", "0", "yes"])
def test_bool_strings_are_refused_with_a_hint(key, text):
    with pytest.raises(SpecRolloutConfigError, match=f"specrollout.{key} must be true or false"):
        SpecRolloutConfig.from_dict(_nest(f"specrollout.{key}", text))


@pytest.mark.parametrize("section", [name for name, _ in iter_sections()])
def test_unknown_key_in_every_section(section):
    with pytest.raises(SpecRolloutConfigError, match=f"unknown key\\(s\\) under {section}: no_such_key;"):
        SpecRolloutConfig.from_dict(_nest(f"{section}.no_such_key", 1))


@pytest.mark.parametrize("section, cls", SECTIONS, ids=[name for name, _ in SECTIONS])
def test_sections_take_a_mapping_or_null(section, cls):
    for value in SAMPLES:
        raw = _nest(section, value)
        if value is None or isinstance(value, dict):
            continue
        _assert_refused(raw, section, value, "section must be a mapping")
    assert _read(SpecRolloutConfig.from_dict(_nest(section, None)), section) == cls()
    assert _read(SpecRolloutConfig.from_dict(_nest(section, {})), section) == cls()


@pytest.mark.parametrize("value", [v for v in SAMPLES if v is not None and not isinstance(v, dict)])
def test_top_level_takes_a_mapping_or_null(value):
    with pytest.raises(SpecRolloutConfigError, match="specrollout must be a mapping"):
        SpecRolloutConfig.from_dict(value)
