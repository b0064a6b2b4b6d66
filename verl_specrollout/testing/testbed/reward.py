"""Rule reward for the synthetic task, with veRL's custom reward-function signature."""

from __future__ import annotations

import re

_ANSWER_RE = re.compile(r"####\s*(-?\d+)")


def extract_answer(text) -> int | None:
    """The integer after the last ``####`` in ``text``; ``None`` when absent or unparsable."""
    if not isinstance(text, str):
        return None
    matches = _ANSWER_RE.findall(text)
    if not matches:
        return None
    try:
        return int(matches[-1])
    except (ValueError, OverflowError):
        return None


def compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float:
    """1.0 iff the ``#### x`` answer in ``solution_str`` equals ``ground_truth``; else 0.0."""
    try:
        pred = extract_answer(solution_str)
        if pred is None:
            return 0.0
        return 1.0 if pred == int(str(ground_truth).strip()) else 0.0
    except Exception:  # robust to any garbage
        return 0.0
