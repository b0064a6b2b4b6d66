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
        rule = f.rule
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


# -------------------------------------------------------------------------------- metrics

DOCS = [os.path.join(REPO, "README.md")] + sorted(
    os.path.join(REPO, "docs", f) for f in os.listdir(os.path.join(REPO, "docs")) if f.endswith(".md"))
SERVER = os.path.join(PKG, "verl_adapter", "server.py")


def doc_metric_names(text: str) -> List[str]:
    """Every `specrollout/...` metric a doc names in a code span, braces with commas expanded
    (`source/{model,siblings}/share` -> two names). `{i}`, `{lo}-{hi}`, `*` stay as wildcards."""
    out: List[str] = []
    for m in re.finditer(r"`(specrollout/[^`\s]*)`", _strip_fences(text)):
        name = m.group(1).split("=")[0]  # `specrollout/learner/state_refused=1`: a value shown
        if name in ("specrollout/", "specrollout/*"):
            continue  # the prefix itself
        todo = [name]
        while todo:
            n = todo.pop()
            alt = re.search(r"\{([^{}]*,[^{}]*)\}", n)
            if alt:
                todo += [n[:alt.start()] + a + n[alt.end():] for a in alt.group(1).split(",")]
            else:
                out.append(n)
    return out


def metric_glob(name: str) -> str:
    return _squash(re.sub(r"\{[^{}]*\}|\*", WILD, name))


def globs_intersect(a: str, b: str) -> bool:
    """Does some name match both globs (full names, wildcards on both sides)?"""
    n, k = len(a), len(b)
    nxt = [False] * (k + 1)
    nxt[k] = True
    for j in range(k - 1, -1, -1):
        nxt[j] = b[j] == WILD and nxt[j + 1]
    for i in range(n - 1, -1, -1):
        cur = [False] * (k + 1)
        cur[k] = a[i] == WILD and nxt[k]
        for j in range(k - 1, -1, -1):
            if a[i] == WILD:
                cur[j] = nxt[j] or cur[j + 1]
            elif b[j] == WILD:
                cur[j] = cur[j + 1] or nxt[j]
            else:
                cur[j] = a[i] == b[j] and nxt[j + 1]
        nxt = cur
    return nxt[0]


def _planner_stats():
    """A real planner's stats after some steps (what the scheduler writes to its stats file)."""
    from verl_specrollout.config import SpecRolloutConfig
    from verl_specrollout.planner.planner import Planner

    p = Planner.from_config(SpecRolloutConfig.from_dict({"method": "ngram", "planner": {"replan_interval": 4}}),
                            max_batch=16)
    for step in range(64):
        b = (1, 2, 4, 8, 16)[step % 5]
        k = p.k_for(b)
        p.observe_step(b, b * (1 + k), k, 0.01 + 0.001 * b * (1 + k))
        if k:
            p.observe_drafts([(k, step % (k + 1))] * b, b)
        p.tick()
    return p.stats()


@functools.lru_cache(maxsize=None)
def logged_metric_globs() -> Tuple[str, ...]:
    """Every name a veRL job logs under specrollout/, as globs: metrics.step_metrics over what a
    rollout server sends (every field of rollout_stats.RolloutStepStats filled), the learner's
    metrics (any name: `learner/{name}`), and what the trainer hook adds (stall detector)."""
    from verl_specrollout import metrics as M
    from verl_specrollout.rollout_stats import RolloutStepStats, SpecCounters

    stats = _planner_stats()
    stats.cost_model = dict(stats.cost_model, fitted=True, knot=512.0)  # as once fitted to measured steps
    server = RolloutStepStats(
        draft_version=3, draft_version_live=4, draft_reloads=1, draft_restores_after_sleep=1, draft_reload_failures=1,
        vllm=SpecCounters(num_drafts=10, num_draft_tokens=40, num_accepted_tokens=20, accepted_per_pos=[8, 6, 4, 2]),
        group={"sources": {s: {"proposed": 4, "accepted": 2, "chosen": 1} for s in M.GROUP_SOURCES},
               "request_steps": 10, "no_draft": 1, "index": {"{name}": 100},
               "decoupled": {"link/{name}": 1, "board/{name}": 2, "alive": 1}},
        planner=stats.since({}),
        decoupled={"drafter/utilisation": 0.5, "drafter/running": 1, "drafter/{name}": 3},
    ).to_dict()  # every field a rollout server fills, in the form it sends
    names = set(M.step_metrics([server], {"{name}": 1.0}))
    names |= set(M.DraftStallDetector().update(1, True))
    return tuple(sorted(metric_glob(n) for n in names))


def metric_constants() -> dict:
    """metrics.py's metric key constants (templates such as `alpha/pos{i}` included)."""
    from verl_specrollout import metrics as M

    return {k: v for k, v in vars(M).items()
            if k.isupper() and isinstance(v, str) and v.startswith(M.PREFIX) and v != M.PREFIX}


# Declared in metrics.py but not logged by a veRL job, and why (planner_metrics still gives them
# for an in-process engine: planner_metrics(scheduler.specrollout_stats())).
NOT_LOGGED_IN_VERL: set = set()  # metrics.py constants a veRL job does not log, with why


def _doc_names() -> List[Tuple[str, str]]:
    out = []
    for path in DOCS:
        with open(path, encoding="utf-8") as f:
            out += [(os.path.relpath(path, REPO), n) for n in doc_metric_names(f.read())]
    return out


def test_metric_name_rules():
    assert doc_metric_names("`specrollout/source/{model,none}/{proposed,share}` and `specrollout/`") == [
        "specrollout/source/none/share", "specrollout/source/none/proposed",
        "specrollout/source/model/share", "specrollout/source/model/proposed"]
    assert globs_intersect(metric_glob("specrollout/alpha/pos{i}"), metric_glob("specrollout/alpha/pos1"))
    assert globs_intersect(metric_glob("specrollout/learner/train/step{j}_top1"), metric_glob("specrollout/learner/{name}"))
    assert not globs_intersect(metric_glob("specrollout/cost/*"), metric_glob("specrollout/mean_k"))


def test_every_metric_the_docs_name_is_logged():
    logged = logged_metric_globs()
    learner_code = code_patterns()
    bad = []
    for doc, name in _doc_names():
        g = metric_glob(name)
        if not any(globs_intersect(g, x) for x in logged):
            bad.append(f"{doc}: {name}")
        elif name.startswith("specrollout/learner/"):
            # learner/{name} is any name the learner reports: its last part must be a name the code has.
            last = metric_glob(name.rsplit("/", 1)[1])
            if last != WILD and not any(globs_intersect(last, _squash(p)) for p in learner_code):
                bad.append(f"{doc}: {name} (no code produces {name.rsplit('/', 1)[1]!r})")
    assert not bad, "docs name metrics a veRL job does not log:\n  " + "\n  ".join(bad)


def test_every_logged_metric_constant_is_documented():
    logged = logged_metric_globs()
    consts = metric_constants()
    not_logged = {k for k, v in consts.items() if not any(globs_intersect(metric_glob(v), x) for x in logged)}
    assert not_logged == NOT_LOGGED_IN_VERL, (
        "metrics.py constants a veRL job does not log (log them, or list them in NOT_LOGGED_IN_VERL with why): "
        f"{sorted(not_logged)}")
    documented = [metric_glob(n) for _, n in _doc_names()]
    missing = sorted(f"{k} = {v!r}" for k, v in consts.items()
                     if k not in NOT_LOGGED_IN_VERL and not any(globs_intersect(metric_glob(v), d) for d in documented))
    assert not missing, "metrics a veRL job logs that no doc names (docs/tuning.md, Reading the metrics):\n  " + \
        "\n  ".join(missing)


def test_cost_model_is_logged_once_the_server_sends_it():
    from verl_specrollout import metrics as M

    stats = _planner_stats()
    cost = dict(stats.cost_model, fitted=True, tokens=1e-4, intercept=0.01, passes=0.002, knot=512.0)
    out = M.step_metrics([{"planner": {"cost_model": cost}}])
    assert out[M.COST_FITTED] == 1.0 and out[M.COST_PER_TOKEN] == 1e-4 and out[M.COST_KNOT_TOKENS] == 512.0
    assert not any(k.startswith(M.PREFIX + "cost/") for k in M.step_metrics([{"planner": {}}]))
