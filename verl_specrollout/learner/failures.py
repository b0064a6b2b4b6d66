"""Counting a failure that repeats (a publish, a state save): every one is counted for the
metrics, only the first of a run of them is logged, so a full disk writes one error, not one per
rollout step."""

from __future__ import annotations


class FailureRun:
    def __init__(self):
        self.total = 0  # every failure so far: the metric
        self.run = 0    # failures since the last success

    def failed(self) -> bool:
        """Count one; True when it starts a run (the one to log)."""
        self.total += 1
        self.run += 1
        return self.run == 1

    def worked(self) -> int:
        """The run ends; returns how long it was (0: there was none)."""
        run, self.run = self.run, 0
        return run
