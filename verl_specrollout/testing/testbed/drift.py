"""A *shifted* version of the testbed task, for drifting the target the way RL moves a policy.

Same questions as :mod:`.task` (same generator, same seeds), but the worked solution is written
in a different format, using only words the testbed tokenizer already has.  Fine-tuning the
target on these solutions moves its response distribution (and its hidden states) away from
the data its EAGLE-3 head was trained on, which is what a frozen draft suffers during RL.

Styles:

* ``"steps"``: every step is numbered and results come first, and the answer sentence is
  always present:
  ``step 1 : 15 = 6 + 9 . step 2 : 30 = 15 * 2 . so the answer is 30 . #### 30``
  (the original: ``now 6 + 9 = 15 . so 15 * 2 = 30 . so the answer is 30 . #### 30``).
* ``"results_first"``: keeps the fillers, writes ``c = x op y`` instead of ``x op y = c``.

The final line ``#### <answer>`` is unchanged, so the reward function still scores it.
"""

from __future__ import annotations

import random
import re

from . import task as task_mod

STYLES = ("steps", "results_first")
_STEP = re.compile(r"^(?:(so|then|now|next) )?(\d+) ([+*-]) (\d+) = (\d+)$")


def shift_solution(solution: str, style: str = "steps") -> str:
    """Rewrite a :func:`task.make_example` solution in the shifted format ``style``."""
    if style not in STYLES:
        raise ValueError(f"unknown drift style {style!r}; choose from {STYLES}")
    parts = [p.strip() for p in solution.split(" . ")]
    final = parts[-1]  # "#### N"
    answer = final.split()[-1]
    out = []
    k = 0
    for p in parts[:-1]:
        m = _STEP.match(p)
        if m is None:  # "so the answer is N"
            continue
        filler, x, op, y, c = m.groups()
        k += 1
        if style == "steps":
            out.append(f"step {k} : {c} = {x} {op} {y} .")
        else:
            out.append(f"{filler + ' ' if filler else ''}{c} = {x} {op} {y} .")
    if style == "steps":
        out.append(f"so the answer is {answer} .")
    out.append(final)
    return " ".join(out)


def make_shifted_examples(n: int, seed: int = 0, style: str = "steps") -> list:
    """``task.make_examples(n, seed)`` with solutions rewritten by :func:`shift_solution`."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ex = task_mod.make_example(rng, i)
        ex.solution = shift_solution(ex.solution, style)
        ex.meta["drift_style"] = style
        out.append(ex)
    return out
