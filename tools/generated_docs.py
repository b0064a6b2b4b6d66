"""The part of a doc that a tool generates: the text between two marker comments.

Shared by tools/gen_config_docs.py and tools/gen_version_docs.py (each declares its doc, markers
and body); the hand-written text around the markers is kept as it is.
"""

import sys
from typing import Callable


def replace_block(current: str, begin: str, end: str, body: str, doc: str) -> str:
    if current.count(begin) != 1 or current.count(end) != 1:
        raise SystemExit(f"{doc}: expected one '{begin}' and one '{end}' marker")
    head, rest = current.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n\n{body}\n{end}{tail}"


def main(argv: list, doc: str, render: Callable[[str], str], usage: str, tool: str) -> int:
    """``tool`` rewrites ``doc`` in place; ``tool --check`` exits 1 when the doc is stale."""
    with open(doc) as f:
        current = f.read()
    fresh = render(current)
    if argv == ["--check"]:
        if fresh != current:
            print(f"{doc} is stale; run python {tool}", file=sys.stderr)
            return 1
        return 0
    if argv:
        print(usage, file=sys.stderr)
        return 2
    with open(doc, "w") as f:
        f.write(fresh)
    return 0
