"""SampleShipper: at most max_in_flight add_batch calls outstanding; when full the oldest is
cancelled and counted (batches and samples); shipping never waits on the learner."""
import time

import pytest

from verl_specrollout.capture.shipper import SampleShipper


class _Ref:
    def __init__(self, n):
        self.n = n

    def __repr__(self):
        return f"ref{self.n}"


class _AddBatch:
    def __init__(self):
        self.calls = []

    def remote(self, refs, policy_step):
        self.calls.append((refs, policy_step))
        return _Ref(len(self.calls))


class _Learner:
    def __init__(self):
        self.add_batch = _AddBatch()


@pytest.fixture
def fake_ray(monkeypatch):
    """ray.put / wait / cancel over refs the test marks done; no Ray cluster needed."""
    import ray

    state = {"done": set(), "cancelled": []}

    def wait(refs, num_returns=1, timeout=None):
        done = [r for r in refs if r in state["done"]]
        return done, [r for r in refs if r not in state["done"]]

    monkeypatch.setattr(ray, "put", lambda obj: ("put", len(obj)))
    monkeypatch.setattr(ray, "wait", wait)
    monkeypatch.setattr(ray, "cancel", lambda ref: state["cancelled"].append(ref))
    return state


def test_full_queue_drops_the_oldest_and_counts_batches_and_samples(fake_ray, caplog):
    learner = _Learner()
    ship = SampleShipper(learner, max_in_flight=2)
    with caplog.at_level("WARNING"):
        for step in range(1, 6):  # the learner answers none of them
            t0 = time.perf_counter()
            assert ship.ship([{}] * step, policy_step=step)
            assert time.perf_counter() - t0 < 0.5  # never waits on the learner
    # 5 sent, 2 in flight (the newest), 3 oldest dropped and cancelled, oldest first
    assert [r.n for r in fake_ray["cancelled"]] == [1, 2, 3]
    assert ship.stats() == {"sent": 5, "dropped": 3, "in_flight": 2, "sent_samples": 15, "dropped_samples": 6}
    assert [r.n for r in ship._in_flight] == [4, 5]
    # logged at the 1st and 2nd drop, not the 3rd: a slow learner does not flood the log
    drops = [r for r in caplog.records if "dropped the oldest" in r.getMessage()]
    assert len(drops) == 2 and "3 samples dropped so far" in drops[-1].getMessage()


def test_finished_calls_free_their_slot_and_are_never_counted_as_dropped(fake_ray):
    learner = _Learner()
    ship = SampleShipper(learner, max_in_flight=2)
    ship.ship([{}], 1)
    ship.ship([{}, {}], 2)
    fake_ray["done"].update(ship._in_flight)  # the learner took both
    ship.ship([{}], 3)
    ship.ship([{}], 4)
    assert ship.stats()["dropped"] == 0 and fake_ray["cancelled"] == []
    ship.ship([{}], 5)  # full again: only now is the oldest unanswered call (3) dropped
    assert [r.n for r in fake_ray["cancelled"]] == [3]
    assert ship.stats()["dropped_samples"] == 1 and ship._sizes.keys() == set(ship._in_flight)


def test_empty_batches_are_not_sent(fake_ray):
    ship = SampleShipper(_Learner(), max_in_flight=1)
    assert not ship.ship([], 1)
    assert ship.stats()["sent"] == 0
