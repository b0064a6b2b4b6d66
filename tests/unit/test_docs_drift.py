"""Docs that cannot drift: what the docs quote from the code must be what the code says.

* docs/troubleshooting.md: every text it quotes from our code (errors, warnings, log lines) is one
  a string literal, f-string or log format under verl_specrollout/ can produce.
* README.md, docs/*.md: every `specrollout/...` metric they name is one the trainer logs, and every
  metric key metrics.py declares is documented.

Convention for quoted texts (stated at the top of docs/troubleshooting.md too): a text our code
emits is an inline code span that contains a space; `...` and `<name>` stand for variable parts.
Code spans with a space that are not emitted texts (shell commands, values) start with a command
word or are listed in NOT_MESSAGES. Texts of veRL or vLLM are quoted in double quotes, not code.
"""

from __future__ import annotations

import ast
import functools
import os
import re
from typing import List, Set, Tuple

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PKG = os.path.join(REPO, "verl_specrollout")
TROUBLESHOOTING = os.path.join(REPO, "docs", "troubleshooting.md")

WILD = "\x00"  # one wildcard: any text, possibly empty

# ----------------------------------------------------------------------------- quoted texts

COMMAND_WORDS = ("python ", "python3 ", "pip ", "ray ", "make ", "bash ", "import ")
NOT_MESSAGES = {
    "[2, L//2, L-3]",                # aux layer ids, a value
    "d2t[draft id]",                 # a formula
    "load_format: auto",             # an engine kwarg shown in a log line, not the line
    'speculators_model_type: "eagle3"',  # a config.json field
}


def _strip_fences(text: str) -> str:
    return re.sub(r"^```.*?^```[^\n]*$", "", text, flags=re.S | re.M)


def quoted_messages(text: str) -> List[str]:
    """The texts a doc quotes from the code (see the module docstring), whitespace collapsed."""
    out = []
    for m in re.finditer(r"`([^`]+)`", _strip_fences(text)):
        span = " ".join(m.group(1).split())
        if " " not in span or span.startswith(COMMAND_WORDS) or span in NOT_MESSAGES:
            continue
        out.append(span)
    return out


def doc_pattern(quote: str) -> str:
    """`...` and `<name>` -> wildcard."""
    p = re.sub(r"<[A-Za-z][^<>]{0,40}>", WILD, quote)
    return p.replace("...", WILD)


# Printf-style (%s, %d, %.2f, %(name)s, %r) and str.format-style ({}, {name}, {0!r:>8}) holes.
_CODE_HOLE = re.compile(r"%(?:\([^)]*\))?[-#0 +]*\d*(?:\.\d+)?[sdrfgixeEGXc]|\{[^{}]*\}")


def _str_pattern(s: str) -> str:
    return _CODE_HOLE.sub(WILD, s).replace("%%", "%")


def _expr_pattern(node: ast.AST) -> str | None:
    """The text a string expression can produce, with its variable parts as wildcards; None if
    the expression is not a string (a name, a call, ...)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _str_pattern(node.value)
    if isinstance(node, ast.JoinedStr):
        parts = []
        for v in node.values:
            if isinstance(v, ast.Constant):
                parts.append(str(v.value).replace("{{", "{").replace("}}", "}"))
            else:
                parts.append(WILD)
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _expr_pattern(node.left), _expr_pattern(node.right)
        if left is None and right is None:
            return None
        return (left if left is not None else WILD) + (right if right is not None else WILD)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        return _expr_pattern(node.left)
    return None


@functools.lru_cache(maxsize=None)
def code_patterns(root: str = PKG) -> Tuple[str, ...]:
    """Every string the package's code can produce (literals, f-strings, `a + b`, `fmt % x`),
    variable parts as wildcards. The largest enclosing string expression wins, so a message
    assembled from pieces is one pattern (its pieces are kept too)."""
    out: Set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for fn in filenames:
            if not fn.endswith(".py"):
                continue
            with open(os.path.join(dirpath, fn), encoding="utf-8") as f:
                tree = ast.parse(f.read())
            docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
            for node in ast.walk(tree):
                if id(node) in docstrings:
                    continue
                p = _expr_pattern(node) if isinstance(node, (ast.Constant, ast.JoinedStr, ast.BinOp)) else None
                if p and p.strip(WILD + " "):
                    out.add(" ".join(p.split(" ")) if "\n" not in p else " ".join(p.split()))
    return tuple(sorted(out))


@functools.lru_cache(maxsize=None)
def config_patterns() -> Tuple[str, ...]:
    """The config errors config.py composes from its declarations (`<key> must be <what it
    accepts>, got ...`, `<key>=... is not supported; choose one of ...`), one per key: their
    wording is built at run time, so the literals alone do not show it."""
    from verl_specrollout import config as c

    out = []
    for key, f, annotation in c.iter_keys():
        rule = f.metadata["rule"]
        out.append(f"{key} must be {c.allowed(annotation, rule)}, got {WILD}")
        if rule.choices:
            out.append(f"{key}={WILD} is not supported; choose one of {', '.join(rule.choices)}")
    return tuple(out)


def _squash(p: str) -> str:
    return re.sub(WILD + "+", WILD, p)


def verbatim_overlap(doc: str, code: str) -> int:
    """How many of the doc quote's own characters at most match the code's literal text, over
    all ways some text of `code` contains a text of `doc` (-1: none). Both are literal characters
    and wildcards; the doc quote may be a fragment of the message. A doc wildcard (`...`) is any
    text; a code wildcard (a formatted value) any text without a space, so a doc may show an
    example value (`3 steps`) where the code formats one."""
    a, b = _squash(WILD + doc + WILD), _squash(code)
    n, k = len(a), len(b)
    none = -1 << 20
    # nxt[j] / cur[j]: best count for a[i+1:] / a[i:] against b[j:] (none: cannot match).
    nxt = [none] * (k + 1)
    nxt[k] = 0
    for j in range(k - 1, -1, -1):
        nxt[j] = nxt[j + 1] if b[j] == WILD else none
    for i in range(n - 1, -1, -1):
        ai = a[i]
        cur = [none] * (k + 1)
        cur[k] = nxt[k] if ai == WILD else none
        for j in range(k - 1, -1, -1):
            bj = b[j]
            if ai == WILD:
                cur[j] = max(nxt[j], cur[j + 1])
            elif bj == WILD:
                cur[j] = max(cur[j + 1], nxt[j] if ai != " " else none)
            elif ai == bj:
                cur[j] = nxt[j + 1] + 1
        nxt = cur
    return nxt[0] if nxt[0] >= 0 else -1


def _grams(s: str, n: int = 5) -> Set[str]:
    return {g for part in s.split(WILD) for g in (part[i:i + n] for i in range(len(part) - n + 1))}


@functools.lru_cache(maxsize=None)
def _indexed(patterns: Tuple[str, ...]) -> List[Tuple[str, Set[str]]]:
    return [(p, _grams(p)) for p in patterns]


def emitted(quote: str, patterns: Tuple[str, ...], candidates: int = 25) -> bool:
    """Can the code produce a text containing `quote`, with at least half of the quote's own
    characters found verbatim in the code's literal text (so formatted values cannot stand in
    for the words of the message)?"""
    doc = doc_pattern(quote)
    literal = len(doc.replace(WILD, ""))
    need = _grams(doc)
    ranked = sorted(((len(need & g), p) for p, g in _indexed(tuple(patterns))), key=lambda x: -x[0])
    for shared, code in ranked[:candidates]:
        if need and not shared:
            break
        if verbatim_overlap(doc, code) * 2 >= literal:
            return True
    return False


def stale_quotes(text: str, patterns: Tuple[str, ...]) -> List[str]:
    return [q for q in quoted_messages(text) if not emitted(q, patterns)]


def test_wildcard_matching_rules():
    code = (_str_pattern("draft v%d not loaded (%s); live draft stays v%s"),)
    assert emitted("draft v<N> not loaded (...); live draft stays v<M>", code)
    assert emitted("draft v3 not loaded (...)", code)  # an example value where the code formats one
    assert emitted("live draft stays", code)  # a fragment
    assert not emitted("draft v<N> was not loaded", code)
    assert not emitted("live draft is kept", code)
    fstr = (_expr_pattern(ast.parse('f"{name} {got} is not supported (supported: {lo} to {hi})"').body[0].value),)
    assert emitted("veRL/vLLM <version> is not supported (supported: ...)", fstr)
    assert not emitted("is not supported (allowed: ...)", fstr)
    # formatted values do not stand in for the words of a message
    assert not emitted("specrollout: malformed ...", fstr)
    assert quoted_messages("a `python -m x y`, `two words`, `one` and\n```\n`in fence`\n```\n") == ["two words"]


def test_troubleshooting_quotes_only_texts_the_code_emits():
    with open(TROUBLESHOOTING, encoding="utf-8") as f:
        text = f.read()
    quotes = quoted_messages(text)
    assert len(quotes) >= 30, "the convention found almost no quoted texts; did the doc's quoting change?"
    stale = stale_quotes(text, code_patterns() + config_patterns())
    assert not stale, ("docs/troubleshooting.md quotes texts no code under verl_specrollout/ emits "
                       "(fix the quote, or the message):\n  " + "\n  ".join(stale))
