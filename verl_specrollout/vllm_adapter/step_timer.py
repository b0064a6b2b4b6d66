"""How long an engine step took, measured the same way under synchronous and asynchronous
scheduling.

vLLM's engine core calls ``schedule()`` and ``update_from_output()`` once per step, but in a
different order depending on the mode:

* synchronous (``EngineCore.step``): schedule(n), execute(n), update(n), schedule(n+1), ...
* asynchronous (``EngineCore.step_with_batch_queue``, the default for EAGLE / draft-model
  speculation on GPUs since vLLM 0.31): schedule(n+1) is called while step n still runs on the
  device, then the engine waits for n's output and calls update(n).

Timing from one ``schedule()`` to the next credits, under async scheduling, each interval to the
wrong step shape (the interval that ends at schedule(n+2) is the wait for step n, not step n+1).
The interval between two consecutive ``update_from_output()`` calls is one step's cycle in both
modes: synchronous, it spans schedule + execute + update of the step being updated; asynchronous,
with the device busy back to back, it spans the device time of the step whose output just came
in. So each interval is credited to the ``scheduler_output`` passed to that update.

An interval is kept only when the engine was busy through it (requests were still running or
waiting after the previous update): after a drain the gap is idle time, not a step cost.
"""

from __future__ import annotations

import time
from typing import Callable, Optional


class StepTimer:
    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._last_update: Optional[float] = None

    def on_update(self, busy_after: bool) -> Optional[float]:
        """Call at the end of ``update_from_output``. Returns the duration of the step just
        updated, or None when it cannot be measured (first step, or the engine was idle before
        it). ``busy_after``: requests remain running or waiting, so the next interval is work."""
        now = self._clock()
        last, self._last_update = self._last_update, (now if busy_after else None)
        return None if last is None else now - last

    def reset(self) -> None:
        """Forget the last update (e.g. after the engine slept or was reconfigured)."""
        self._last_update = None
