"""The learner never stalls the trainer: metrics() is lock-free, the actor worker keeps at most
one train call in flight, and the trainer's wait on the learner is bounded and logged."""
import threading
import time

import pytest
import torch

from verl_specrollout.learner import remote as remote_mod
from verl_specrollout.learner.actor import SpecLearner
from verl_specrollout.learner.remote import TrainCalls
from verl_specrollout.metrics import (LEARNER_METRICS_MISSES, LEARNER_TRAIN_CALL_ERRORS,
                                      LEARNER_TRAIN_CALLS_SKIPPED, LEARNER_WAIT_S, step_metrics)
from verl_specrollout.testing.testbed.toy import TOY_AUX, get_toy, toy_samples


@pytest.fixture
def learner(tmp_path):
    torch.set_num_threads(1)
    return SpecLearner({"publish_dir": str(tmp_path / "pub"), "buffer_bytes": 8 << 20}, get_toy()["target"],
                       TOY_AUX, batch_size=2, num_steps=1, heldout_every=1000)


def _hold(monkeypatch, obj, name):
    """Make obj.name block (inside the learner's lock) until released; returns (entered, release)."""
    entered, release = threading.Event(), threading.Event()
    real = getattr(obj, name)

    def slow(*args, **kwargs):
        entered.set()
        assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, slow)
    return entered, release


@pytest.mark.parametrize("busy", ["train", "publish"])
def test_metrics_answers_while_train_or_publish_holds_the_lock(learner, monkeypatch, busy):
    learner.add_batch(toy_samples(4), policy_step=2)
    if busy == "train":
        entered, release = _hold(monkeypatch, learner.trainer, "train_step")
        call = lambda: learner.train(1)  # noqa: E731
    else:
        entered, release = _hold(monkeypatch, learner.publisher, "publish")
        call = learner.publish
    t = threading.Thread(target=call)
    t.start()
    try:
        assert entered.wait(60)
        assert not learner._lock.acquire(blocking=False)  # the busy call really holds the lock
        t0 = time.perf_counter()
        m = learner.metrics(5)
        assert time.perf_counter() - t0 < 0.5
        # the values of the last finished call: nothing trained or published yet
        assert m["version"] == 0 and m["draft_step"] == 0 and m["lag"] == 6 and m["buffer_samples"] == 4
    finally:
        release.set()
        t.join(60)
    m = learner.metrics(5)
    if busy == "train":
        assert m["draft_step"] == 1 and m["loss"] is not None and m["trained_up_to_policy_step"] == 2
    else:
        assert m["version"] == 1


def test_metrics_snapshot_is_replaced_not_mutated(learner):
    learner.add_batch(toy_samples(2), policy_step=1)
    before = learner.metrics()
    learner.train(1)
    learner.publish()
    assert before["version"] == 0 and before["draft_step"] == 0
    assert learner.metrics()["version"] == 1


# ----------------------------------------------------------------------------- one call in flight

class _Method:
    def __init__(self):
        self.calls = []

    def remote(self, *args):
        self.calls.append(args)
        return f"ref{len(self.calls)}"


class _FakeLearner:
    def __init__(self):
        self.train_and_publish = _Method()
        self.report_calls = _Method()


def test_train_calls_skip_while_running_and_count_errors_logging_once(monkeypatch, caplog):
    done, failed = set(), {}

    def result(ref):
        if ref in failed:
            raise failed[ref]
        return {"published": True}

    monkeypatch.setattr(remote_mod, "_call_done", lambda ref: ref in done)
    monkeypatch.setattr(remote_mod, "_call_result", result)
    lr = _FakeLearner()
    calls = TrainCalls(lr)
    assert calls.fire(1, ["a"]) and lr.train_and_publish.calls == [(1, ["a"])]
    # the first call still runs: this round is skipped, counted and reported, nothing queued
    assert not calls.fire(1, ["b"]) and not calls.fire(1, ["c"])
    assert len(lr.train_and_publish.calls) == 1 and calls.skipped == 2
    assert lr.report_calls.calls[-1] == ({"train_calls_skipped": 2, "train_call_errors": 0},)
    done.add("ref1")
    assert calls.fire(1, ["d"]) and calls.pending == "ref2"
    done.add("ref2")
    failed["ref2"] = RuntimeError("learner exploded")
    with caplog.at_level("WARNING"):
        assert calls.fire(1, [])
        done.add("ref3")
        failed["ref3"] = RuntimeError("learner exploded again")
        assert calls.fire(1, [])
    assert calls.errors == 2 and calls.skipped == 2
    assert caplog.text.count("train_and_publish failed") == 1 and "learner exploded" in caplog.text
    assert lr.report_calls.calls[-1] == ({"train_calls_skipped": 2, "train_call_errors": 2},)


def test_call_counters_reach_the_trainer_metrics(learner):
    learner.report_calls({"train_calls_skipped": 3, "train_call_errors": 1})
    out = step_metrics([], learner.metrics(1))
    assert out[LEARNER_TRAIN_CALLS_SKIPPED] == 3.0 and out[LEARNER_TRAIN_CALL_ERRORS] == 1.0


# ----------------------------------------------------------------------------- the trainer's side

def test_trainer_waits_briefly_and_counts_misses(monkeypatch, caplog):
    from verl_specrollout.config import LearnerConfig
    from verl_specrollout.verl_adapter import trainer_hooks

    assert trainer_hooks.LEARNER_METRICS_TIMEOUT_S <= 5.0
    seen = {}

    def answer(cfg, step, timeout):
        seen["timeout"] = timeout
        time.sleep(0.05)
        return {"version": 4}

    state = trainer_hooks._StepState()
    monkeypatch.setattr(trainer_hooks, "fetch_learner_metrics", answer)
    learner, extra = trainer_hooks.timed_learner_metrics(state, LearnerConfig(publish_dir="/x"), 1)
    assert learner == {"version": 4} and seen["timeout"] == trainer_hooks.LEARNER_METRICS_TIMEOUT_S
    assert 0.05 <= extra[LEARNER_WAIT_S] < 5 and extra[LEARNER_METRICS_MISSES] == 0

    def timeout(cfg, step, timeout):
        import ray

        raise ray.exceptions.GetTimeoutError("no answer")

    monkeypatch.setattr(trainer_hooks, "fetch_learner_metrics", timeout)
    with caplog.at_level("WARNING"):
        for _ in range(2):
            learner, extra = trainer_hooks.timed_learner_metrics(state, LearnerConfig(publish_dir="/x"), 2)
    assert learner is None and extra[LEARNER_METRICS_MISSES] == 2 and extra[LEARNER_WAIT_S] < 1
    assert "learner metrics missed" in caplog.text


def test_trainer_finds_this_jobs_learner_by_derived_name(monkeypatch):
    import ray

    from verl_specrollout.config import LearnerConfig
    from verl_specrollout.learner.remote import learner_actor_name
    from verl_specrollout.verl_adapter import trainer_hooks

    asked = {}

    class Handle:
        class metrics:  # noqa: N801
            @staticmethod
            def remote(step):
                return ("ref", step)

    def get_actor(name, namespace=None):
        asked.update(name=name, namespace=namespace)
        return Handle

    monkeypatch.setattr(ray, "get_actor", get_actor)
    monkeypatch.setattr(ray, "get", lambda ref, timeout=None: {"ref": ref, "timeout": timeout})
    cfg = LearnerConfig(publish_dir="/jobs/a/drafts")
    out = trainer_hooks.fetch_learner_metrics(cfg, 7, 5.0)
    assert out == {"ref": ("ref", 7), "timeout": 5.0}
    assert asked == {"name": learner_actor_name({"publish_dir": "/jobs/a/drafts"}), "namespace": "specrollout"}


def test_trainer_resolves_publish_dir_to_an_absolute_path(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from verl_specrollout.verl_adapter import trainer_hooks
    from verl_specrollout.verl_adapter.actor_hooks import spec_config

    monkeypatch.chdir(tmp_path)
    spec = {"enable": True, "method": "eagle3", "draft_path": get_toy()["draft"],
            "learner": {"enable": True, "publish_dir": "rel/drafts"}}
    config = OmegaConf.create({"actor_rollout_ref": {"rollout": {"custom": {"specrollout": spec}}},
                               "trainer": {"default_local_dir": None}})
    trainer_hooks._resolve_publish_dir(config)
    assert spec_config(config.actor_rollout_ref.rollout).learner.publish_dir == str(tmp_path / "rel" / "drafts")
