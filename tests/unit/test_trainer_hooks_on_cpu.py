"""The trainer seams shared by every trainer veRL 0.9 ships, on the real veRL classes.

One hook each, not one per trainer: construction (legacy RayPPOTrainer and the V1 PPOTrainer base
class whose __init__ all three V1 modes run), our replica's registration, and veRL's Tracking.log.
The end-to-end runs on each trainer are in tests/integration/test_verl_spec_grpo.py.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import types

import pytest

pytest.importorskip("verl")


@pytest.fixture(scope="module")
def verl_loaded():
    os.environ.setdefault("SPECROLLOUT_PLATFORM", "cpu")
    import verl  # noqa: F401  (loads our verl.plugins entry point)

    import verl_specrollout

    verl_specrollout.register()
    from verl_specrollout import compat

    mods = {name: importlib.import_module(name) for name, _ in compat.VERL_TRAINER_CLASSES}
    mods[compat.VERL_TRACKING_MODULE] = importlib.import_module(compat.VERL_TRACKING_MODULE)
    return mods


def test_both_trainer_families_and_the_step_logger_are_hooked_once(verl_loaded):
    from verl_specrollout import compat
    from verl_specrollout.verl_adapter.import_hook import WRAPPED_ATTR

    for module_name, class_name in compat.VERL_TRAINER_CLASSES:
        cls = getattr(verl_loaded[module_name], class_name)
        assert getattr(cls.__init__, WRAPPED_ATTR, False), f"{class_name}.__init__ not hooked"
    tracking = getattr(verl_loaded[compat.VERL_TRACKING_MODULE], compat.VERL_TRACKING_CLASS)
    assert getattr(getattr(tracking, compat.VERL_TRACKING_LOG), WRAPPED_ATTR, False)


@pytest.mark.parametrize("mode", ["sync", "colocate_async", "separate_async"])
def test_every_v1_mode_runs_the_hooked_base_init(verl_loaded, mode):
    from verl.trainer.ppo.v1 import get_trainer_cls

    from verl_specrollout import compat
    from verl_specrollout.verl_adapter.import_hook import WRAPPED_ATTR

    assert mode in compat.VERL_V1_TRAINER_MODES
    base = getattr(verl_loaded[compat.VERL_V1_TRAINER_MODULE], compat.VERL_V1_TRAINER_CLASS)
    cls = get_trainer_cls(mode)
    assert issubclass(cls, base)
    own = cls.__dict__.get("__init__")
    # Either it inherits the hooked __init__, or its own __init__ calls the base's first.
    assert own is None and getattr(cls.__init__, WRAPPED_ATTR, False) or "super().__init__(config" in \
        inspect.getsource(own)


def _job_config(tmp_path, learner=True, **spec):
    """veRL's own ppo_trainer.yaml with our override, as a user's command line makes it."""
    from hydra import compose, initialize_config_dir

    import verl

    cfg_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    p = "+actor_rollout_ref.rollout.custom.specrollout."
    overrides = [f"{p}enable=true", f"{p}method=ngram", f"trainer.default_local_dir={tmp_path}/ckpt"]
    if learner:
        overrides += [f"{p}learner.enable=true", f"{p}learner.aux_layer_ids=[0,1,2]"]
    overrides += [f"{p}{k}={v}" for k, v in spec.items()]
    with initialize_config_dir(config_dir=cfg_dir, version_base=None):
        return compose("ppo_trainer", overrides=overrides)


def test_construction_resolves_publish_dir_on_the_default_config(verl_loaded, tmp_path, monkeypatch):
    from verl_specrollout.verl_adapter import trainer_hooks
    from verl_specrollout.verl_adapter.actor_hooks import spec_config

    cfg = _job_config(tmp_path)
    assert cfg.trainer.use_v1  # veRL's default trainer
    monkeypatch.setattr(trainer_hooks, "check_job", lambda config: [], raising=False)
    trainer_hooks._resolve_publish_dir(cfg)
    got = spec_config(cfg.actor_rollout_ref.rollout).learner.publish_dir
    assert got == os.path.join(str(tmp_path), "ckpt", "specrollout_drafts")


class _Replica:
    """What the hooks read of our replica: its rollout config and its node-0 server handle."""

    def __init__(self, config):
        from verl_specrollout import compat

        self.config = config
        setattr(self, compat.VERL_REPLICA_SERVER_HANDLE_ATTR, object())


def test_step_logger_adds_our_metrics_to_training_steps_only(verl_loaded, tmp_path, monkeypatch):
    from verl.utils.tracking import Tracking

    from verl_specrollout.verl_adapter import trainer_hooks

    cfg = _job_config(tmp_path, learner=False)
    replica = _Replica(cfg.actor_rollout_ref.rollout)
    monkeypatch.setattr(trainer_hooks, "_replicas", __import__("weakref").WeakSet())
    trainer_hooks.register_replica(replica)
    asked = []

    def collect(spec_cfg, step, handles=None):
        asked.append(step)
        return {"specrollout/mean_acceptance_length": 2.5, "rollout/spec_accept_rate": 0.25}

    monkeypatch.setattr(trainer_hooks, "collect_step_metrics", collect)
    path = tmp_path / "metrics.jsonl"
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(path))
    logger = Tracking(project_name="p", experiment_name="e", default_backend=["file"])
    logger.log(data={"val-core/score": 0.1}, step=0)  # validation before training: left alone
    logger.log(data={"training/global_step": 1, "rollout/spec_accept_rate": 0.5}, step=1)
    logger.finish()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert asked == [1]
    assert "specrollout/mean_acceptance_length" not in rows[0]["data"]
    assert rows[1]["data"]["specrollout/mean_acceptance_length"] == 2.5
    assert rows[1]["data"]["rollout/spec_accept_rate"] == 0.5  # the trainer's own value wins


def test_step_logger_is_silent_without_our_replicas(verl_loaded, tmp_path, monkeypatch):
    from verl_specrollout.verl_adapter import trainer_hooks

    monkeypatch.setattr(trainer_hooks, "_replicas", __import__("weakref").WeakSet())
    monkeypatch.setattr(trainer_hooks, "collect_step_metrics", lambda *a, **k: pytest.fail("asked"))
    data = {"training/global_step": 1}
    assert trainer_hooks.add_step_metrics(data, 1) is data


def test_verl_spec_metrics_use_verls_own_aggregation():
    from verl_specrollout.verl_adapter.trainer_hooks import verl_spec_metrics

    # Two servers; per request (drafted, accepted, verify steps). veRL averages per request.
    results = [{"requests": {"drafts": [8, 0], "accepts": [4, 0], "verifies": [2, 0]}},
               {"requests": {"drafts": [4], "accepts": [4], "verifies": [1]}}, {}]
    out = verl_spec_metrics(results)
    assert out["rollout/spec_accept_rate"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert out["rollout/spec_accept_length"] == pytest.approx((3.0 + 0.0 + 5.0) / 3)
    assert verl_spec_metrics([{}, None]) == {}


def test_collect_step_metrics_reads_every_registered_server(monkeypatch):
    import ray

    from verl_specrollout.config import SpecRolloutConfig
    from verl_specrollout.verl_adapter import trainer_hooks

    class Server:
        def __init__(self, n):
            self.specrollout_step_metrics = types.SimpleNamespace(remote=lambda: {
                "draft_version": 0, "draft_version_live": 0,
                "vllm": {"num_drafts": n, "num_draft_tokens": 4 * n, "num_accepted_tokens": 2 * n,
                         "accepted_per_pos": [n, n, 0, 0]},
                "requests": {"drafts": [4 * n], "accepts": [2 * n], "verifies": [n]}})

    monkeypatch.setattr(ray, "get", lambda refs, timeout=None: list(refs))
    monkeypatch.setattr(trainer_hooks, "_state", None)
    cfg = SpecRolloutConfig.from_dict({"enable": True, "method": "ngram"})
    out = trainer_hooks.collect_step_metrics(cfg, 3, handles=[Server(2), Server(6)])
    assert out["specrollout/num_drafts"] == 8
    assert out["specrollout/mean_acceptance_length"] == pytest.approx(1 + 16 / 8)
    assert out["rollout/spec_accept_length"] == pytest.approx(3.0)


def test_construction_runs_the_job_checks_before_any_worker(verl_loaded, tmp_path):
    """A setting that would bypass us fails at trainer construction, in either trainer family."""
    from omegaconf import open_dict

    from verl_specrollout.errors import SpecRolloutConfigError
    from verl_specrollout.verl_adapter.trainer_hooks import on_trainer_config

    cfg = _job_config(tmp_path)
    with open_dict(cfg):
        cfg.actor_rollout_ref.rollout.disaggregation.enabled = True
    with pytest.raises(SpecRolloutConfigError, match="disaggregation.enabled"):
        on_trainer_config(cfg)


def test_separate_async_actor_worker_runs_our_learner_hook(verl_loaded):
    """separate_async swaps veRL's actor worker for DetachActorWorker; it must still run our
    init_model hook (capture + learner), and its own old-log-prob path still calls compute_log_prob."""
    from verl.experimental.separation.engine_workers import DetachActorWorker
    from verl.trainer.ppo.v1 import get_trainer_cls

    from verl_specrollout import compat
    from verl_specrollout.verl_adapter.import_hook import WRAPPED_ATTR

    base = getattr(importlib.import_module(compat.VERL_ACTOR_WORKER_MODULE), compat.VERL_ACTOR_WORKER_CLASS)
    assert issubclass(DetachActorWorker, base)
    assert getattr(getattr(DetachActorWorker, compat.VERL_WORKER_INIT_METHOD), WRAPPED_ATTR, False)
    src = inspect.getsource(get_trainer_cls("separate_async")._compute_old_log_prob)
    assert "super()._compute_old_log_prob(batch, metrics)" in src
