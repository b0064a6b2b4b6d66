"""Progress lines for long work: ``i/N``, elapsed, ETA and rate, at most one line every few seconds.

    from verl_specrollout.progress import Progress, track

    p = Progress(800, "testbed target")
    for step in range(800):
        ...
        p.update(note=f"loss {loss:.3f}")      # prints when due, and always at the last item
    for b in track(batch_sizes, "sweep"):      # the same around any iterable
        ...

One plain line per report (``[testbed target] 120/800 15%, 0:42 elapsed, ETA 3:58, 2.86 step/s loss 1.2``),
never a carriage return: CI logs, ``tee`` and Ray's log forwarding keep every line, and a TTY gets
the same lines. Standard library only: tqdm is installed in the venv (vLLM pulls it) but its
in-place bar turns into one line per refresh in a log file, and its ``mininterval`` does not bound
the lines of a slow loop, which is what a 20-minute testbed build needs.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Iterable, Iterator, Optional, TextIO

DEFAULT_EVERY_S = 5.0


def fmt_duration(seconds: float) -> str:
    """``83`` -> ``1:23``, ``3725`` -> ``1:02:05``; ``?`` for an unknown (None, negative, inf, nan)."""
    if seconds is None or not seconds >= 0 or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Counts items of a known ``total`` and prints a line when ``every_s`` seconds have passed since
    the last one, on the first item and on the last. ``total`` may be None (no ETA then).

    The ETA is elapsed / done x remaining: items of one loop cost about the same here (training
    steps, benchmark repeats), and a smoother estimate would hide a machine that slowed down.
    ``warmup``: the first this many items carry start-up (a veRL job's first step starts Ray and
    vLLM); once past them the ETA and rate count only the items after."""

    def __init__(self, total: Optional[int], label: str, *, every_s: float = DEFAULT_EVERY_S,
                 stream: Optional[TextIO] = None, clock: Callable[[], float] = time.monotonic,
                 unit: str = "", warmup: int = 0):
        if total is not None and total < 0:
            raise ValueError(f"progress total must be >= 0 or None, got {total}")
        if every_s < 0:
            raise ValueError(f"progress every_s must be >= 0, got {every_s}")
        self.total, self.label, self.every_s, self.unit = total, label, every_s, unit
        self._stream, self._clock = stream, clock
        self.done = 0
        self.start = clock()
        self._last_print: Optional[float] = None
        self.warmup = max(0, int(warmup))
        self._warm_at: Optional[float] = None  # when the warm-up items were done

    @property
    def elapsed(self) -> float:
        return self._clock() - self.start

    def _steady(self) -> tuple:
        """(items, seconds) the ETA and rate go by: past the warm-up items once there are some."""
        if self._warm_at is not None and self.done > self.warmup:
            return self.done - self.warmup, self._clock() - self._warm_at
        return self.done, self.elapsed

    def eta(self) -> Optional[float]:
        """Seconds left, or None while nothing is done or the total is unknown."""
        n, sec = self._steady()
        if self.total is None or n <= 0:
            return None
        return sec / n * max(0, self.total - self.done)

    def rate(self) -> Optional[float]:
        n, sec = self._steady()
        return n / sec if sec > 0 and n > 0 else None

    def line(self, note: str = "") -> str:
        if self.total:
            count = f"{self.done}/{self.total} {100 * self.done // self.total}%"
        else:
            count = f"{self.done}" if self.total is None else f"{self.done}/0"
        parts = [f"[{self.label}] {count}", f"{fmt_duration(self.elapsed)} elapsed"]
        if self.total is not None and self.done < self.total:
            parts.append(f"ETA {fmt_duration(self.eta())}")
        rate = self.rate()
        if rate is not None:
            unit = self.unit or "item"
            parts.append(f"{rate:.3g} {unit}/s" if rate >= 1 else f"{1 / rate:.3g} s/{unit}")
        text = ", ".join(parts)
        return f"{text} {note}" if note else text

    def update(self, n: int = 1, note="") -> bool:
        """Count ``n`` more items; True when a line was printed. ``note`` may be a callable, called only
        when a line is printed (a training loop's loss read or an extra metric costs nothing otherwise)."""
        self.done += n
        return self._maybe_print(note)

    def set(self, done: int, note="") -> bool:
        """Set the count (for loops that number their own items, e.g. ``enumerate``)."""
        self.done = done
        return self._maybe_print(note)

    def _maybe_print(self, note) -> bool:
        now = self._clock()
        if self._warm_at is None and self.warmup and self.done >= self.warmup:
            self._warm_at = now
        last = self.total is not None and self.done >= self.total
        if not (last or self._last_print is None or now - self._last_print >= self.every_s):
            return False
        self._last_print = now
        self.print(note() if callable(note) else note)
        return True

    def print(self, note: str = "") -> None:
        """A line now, whatever the interval."""
        stream = self._stream or sys.stdout  # read at print time: pytest's capsys swaps it
        print(self.line(note), file=stream, flush=True)


def track(items: Iterable, label: str, total: Optional[int] = None, **kwargs) -> Iterator:
    """Yield from ``items``, counting each one after the loop body has run (so the line printed with
    the last item says the whole loop's time)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    p = Progress(total, label, **kwargs)
    for item in items:
        yield item
        p.update()


def stage(i: int, n: int, what: str, label: str = "progress", *, since: Optional[float] = None,
          stream: Optional[TextIO] = None) -> None:
    """One line for the start of stage ``i`` of ``n`` of a job whose stages differ in cost (no ETA):
    ``[quickstart] part 2/3: veRL GRPO, plain (0:42 elapsed)``."""
    el = f" ({fmt_duration(time.monotonic() - since)} elapsed)" if since is not None else ""
    print(f"[{label}] part {i}/{n}: {what}{el}", file=stream or sys.stdout, flush=True)
