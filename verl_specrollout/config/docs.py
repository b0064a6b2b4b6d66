"""The key reference in docs/configuration.md, generated from the declarations (schema.py).

    python -m verl_specrollout.config --markdown   # print it
    python tools/gen_config_docs.py                # rewrite docs/configuration.md
"""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

from verl_specrollout.config.keys import TYPE_NAMES, Rule, accepted_types, iter_keys, iter_sections
from verl_specrollout.config.messages import bounds_text


def _default_text(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _type_text(annotation: Any) -> str:
    kinds, optional = accepted_types(annotation)
    names = [TYPE_NAMES[k] for k in kinds] + (["null"] if optional else [])
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _constraint_text(annotation: Any, rule: Rule) -> str:
    """The constraint column: the rule alone (the type has its own column)."""
    kinds, _ = accepted_types(annotation)
    alternatives = []
    if rule.choices:
        quoted = ", ".join(f"`{c}`" for c in rule.choices)
        alternatives.append(quoted if len(rule.choices) == 1 else f"one of {quoted}")
    if bounds_text(rule):
        number = "int" if int in kinds else "number"
        alternatives.append(bounds_text(rule) if len(kinds) == 1 else f"{number} {bounds_text(rule)}")
    parts = [" or ".join(alternatives)] if alternatives else []
    if rule.nonempty:
        parts.append("non-empty")
    if rule.text:
        parts.append(rule.text)
    return "; ".join(parts) or "-"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _section_table(cls: type, prefix: str) -> list:
    lines = [f"## `{prefix}`", "", _cell(cls.__doc__.strip().splitlines()[0]), "",
             "| key | type | default | constraint | description |", "|---|---|---|---|---|"]
    for _, spec, annotation in iter_keys(cls, prefix):
        if spec.key.count(".") != prefix.count(".") + 1:
            continue  # a nested section's key: that section has its own table
        doc = spec.doc
        if spec.example is not None:
            doc += f" Example: `{json.dumps(spec.example)}`."
        lines.append(f"| `{spec.name}` | {_type_text(annotation)} | {_default_text(spec.default)} | "
                     f"{_cell(_constraint_text(annotation, spec.rule))} | {_cell(doc)} |")
    return lines + [""]


def markdown_reference() -> str:
    """The key reference for docs/configuration.md, generated from the declarations."""
    from verl_specrollout.config.schema import ENABLED_RULES, RELATION_RULES

    lines = [
        "Types are strict. `true`/`false` must be booleans: Hydra's unquoted `enable=true`, YAML's `true`; "
        "the strings `\"true\"`/`\"false\"` are refused. Integers must be integers (not `4.0`, not `\"4\"`); "
        "a float key also takes an integer (`lr=1`). A section given as null (`planner: null`, or `planner:` "
        "with nothing under it) means all of its defaults; a section given as anything else but a mapping is "
        "an error. Unknown keys are errors (a typo must not silently fall back to a default).",
        "",
        "Every key's type and range is checked whether or not `enable` is set; the draft checkpoint "
        "(`draft_path` exists, vocabulary matches the target's) only when `enable=true`.",
        "",
    ]
    for prefix, cls in iter_sections():
        lines += _section_table(cls, prefix)
    lines += ["## Rules between keys", ""]
    lines += [f"- {rule.__doc__.strip()}" for rule in RELATION_RULES + ENABLED_RULES]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["--markdown"]:
        print("usage: python -m verl_specrollout.config --markdown", file=sys.stderr)
        return 2
    sys.stdout.write(markdown_reference())
    return 0
