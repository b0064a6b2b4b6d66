"""Start-up guards (verl_adapter/startup_checks.py): each way speculative rollout could silently turn
off fires when it should and stays silent when it should not, on real veRL 0.9.1 configs (Hydra
compose of veRL's ppo_trainer.yaml, RolloutConfig dataclasses) and, for the plugin allow-list, in
real subprocesses that import veRL under the environment variable and let vLLM load its plugins."""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys

import pytest

from verl_specrollout.errors import SpecRolloutConfigError
from verl_specrollout.verl_adapter import startup_checks as sc

SPEC = "+actor_rollout_ref.rollout.custom.specrollout"
ON = [f"{SPEC}.enable=true"]
EAGLE = ON + [f"{SPEC}.method=eagle3", f"{SPEC}.draft_path=/ckpt/eagle3"]
LEARNER = EAGLE + [f"{SPEC}.learner.enable=true"]
MTP = ["actor_rollout_ref.model.mtp.enable=true", "actor_rollout_ref.model.mtp.enable_rollout=true"]
BYPASS = ["algorithm.rollout_correction.bypass_mode=true"]
DISAGG = ["actor_rollout_ref.rollout.disaggregation.enabled=true"]
NO_ENV: dict = {}


@pytest.fixture(scope="module")
def compose():
    import verl
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        yield lambda *overrides: hydra_compose(
            "ppo_trainer", overrides=["actor_rollout_ref.rollout.name=vllm", *overrides])


@pytest.fixture(autouse=True)
def _fresh_dedupe():
    sc._logged.clear()
    yield
    sc._logged.clear()


def _raises(fn, *args, **kwargs) -> str:
    with pytest.raises(SpecRolloutConfigError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert msg.startswith("verl-specrollout:") and "\n" not in msg, msg
    return msg


# ----------------------------------------------------------------------------- check_job
def test_job_silent_by_default_and_when_off(compose):
    assert sc.check_job(compose(*EAGLE), environ=NO_ENV) == []
    assert sc.check_job(compose(*LEARNER), environ=NO_ENV) == []
    # Our feature off: none of our business, whatever else is set.
    assert sc.check_job(compose(*MTP, *BYPASS, *DISAGG), environ=NO_ENV) == []
    assert sc.check_job(compose(f"{SPEC}.enable=false", *MTP, *BYPASS, *DISAGG), environ=NO_ENV) == []


def test_job_mtp_rollout_with_ours_is_an_error(compose):
    msg = _raises(sc.check_job, compose(*EAGLE, *MTP), environ=NO_ENV)
    assert "actor_rollout_ref.model.mtp.enable_rollout" in msg and "specrollout.enable" in msg
    # MTP loaded / trained but not used for rollout: no second drafter, fine.
    assert sc.check_job(compose(*EAGLE, "actor_rollout_ref.model.mtp.enable=true"), environ=NO_ENV) == []
    assert sc.check_job(compose(*EAGLE, "actor_rollout_ref.model.mtp.enable_rollout=true"), environ=NO_ENV) == []


def test_job_mtp_set_on_the_rollout_directly(compose):
    cfg = compose(*EAGLE, "actor_rollout_ref.rollout.mtp={enable:true,enable_rollout:true}")
    assert "mtp.enable_rollout" in _raises(sc.check_job, cfg, environ=NO_ENV)


def test_job_bypass_mode_with_the_learner_is_an_error(compose):
    msg = _raises(sc.check_job, compose(*LEARNER, *BYPASS), environ=NO_ENV)
    assert "algorithm.rollout_correction.bypass_mode" in msg and "learner.enable" in msg
    # Without the learner, speculation is unaffected by bypass mode.
    assert sc.check_job(compose(*EAGLE, *BYPASS), environ=NO_ENV) == []
    assert sc.check_job(compose(*LEARNER, "algorithm.rollout_correction.bypass_mode=false"), environ=NO_ENV) == []


def test_job_disaggregation_is_an_error(compose):
    msg = _raises(sc.check_job, compose(*EAGLE, *DISAGG), environ=NO_ENV)
    assert "actor_rollout_ref.rollout.disaggregation.enabled" in msg and "not supported" in msg


def test_job_other_rollout_engine_is_an_error(compose):
    msg = _raises(sc.check_job, compose(*EAGLE, "actor_rollout_ref.rollout.name=sglang"), environ=NO_ENV)
    assert "actor_rollout_ref.rollout.name=sglang" in msg


def test_job_vllm_plugins_allow_list(compose, caplog):
    cfg = compose(*EAGLE)
    assert sc.check_job(cfg, environ={"VLLM_PLUGINS": "specrollout,other"}) == []
    with caplog.at_level("WARNING", logger="verl_specrollout.startup_checks"):
        warnings = sc.check_job(cfg, environ={"VLLM_PLUGINS": "other"})
        again = sc.check_job(cfg, environ={"VLLM_PLUGINS": "other"})
    assert len(warnings) == 1 and "VLLM_PLUGINS='other'" in warnings[0] and "skip_draft_at_k0" in warnings[0]
    assert warnings[0].startswith("verl-specrollout:")
    assert again == [] and [r.getMessage() for r in caplog.records] == warnings  # logged once
    # Group drafting lives in that plugin: an error. vLLM does not strip names: " specrollout" misses.
    msg = _raises(sc.check_job, compose(*ON, f"{SPEC}.method=group"), environ={"VLLM_PLUGINS": "a, specrollout"})
    assert "VLLM_PLUGINS" in msg and "method=group" in msg
    # ngram without group: nothing of the plugin is needed.
    assert sc.check_job(compose(*ON, f"{SPEC}.method=ngram"), environ={"VLLM_PLUGINS": "other"}) == []


def test_job_vllm_plugins_on_the_cpu_platform_is_an_error(compose):
    assert "lossless" in _raises(sc.check_job, compose(*EAGLE), environ={"VLLM_PLUGINS": "", "SPECROLLOUT_PLATFORM": "cpu"})
    assert len(sc.check_job(compose(*EAGLE), environ={"VLLM_PLUGINS": "", "SPECROLLOUT_PLATFORM": "gpu"})) == 1


def test_job_bad_specrollout_block_raises_its_own_error(compose):
    with pytest.raises(SpecRolloutConfigError, match="max_k"):
        sc.check_job(compose(*EAGLE, f"{SPEC}.max_k=0"), environ=NO_ENV)


# ----------------------------------------------------------------------------- check_rollout
def _rollout(compose, *overrides):
    from verl.utils.config import omega_conf_to_dataclass

    cfg = compose(*overrides)
    return omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout), cfg.actor_rollout_ref.model


def test_rollout_dataclass(compose):
    rollout, model = _rollout(compose, *EAGLE)
    assert type(rollout).__name__ == "RolloutConfig"
    assert sc.check_rollout(rollout, model, environ=NO_ENV) == []

    rollout, model = _rollout(compose, *EAGLE, *MTP)
    assert "mtp.enable_rollout" in _raises(sc.check_rollout, rollout, model, environ=NO_ENV)

    rollout, model = _rollout(compose, *EAGLE, *DISAGG)
    assert "disaggregation.enabled" in _raises(sc.check_rollout, rollout, model, environ=NO_ENV)

    rollout, model = _rollout(compose, *MTP, *DISAGG)  # ours off
    assert sc.check_rollout(rollout, model, environ=NO_ENV) == []


def test_rollout_dictconfig_and_warning_once_per_process(compose):
    rollout = compose(*EAGLE).actor_rollout_ref.rollout
    first = sc.check_rollout(rollout, None, environ={"VLLM_PLUGINS": "other"})
    second = sc.check_rollout(rollout, None, environ={"VLLM_PLUGINS": "other"})  # the next replica
    assert len(first) == 1 and "VLLM_PLUGINS" in first[0] and second == []


# ----------------------------------------------------------------------------- check_plugin_allowed
@pytest.mark.parametrize("env, excluded", [
    ({}, False),
    ({"VERL_USE_EXTERNAL_PLUGINS": "auto"}, False),
    ({"VERL_USE_EXTERNAL_PLUGINS": " AUTO "}, False),
    ({"VERL_USE_EXTERNAL_PLUGINS": "specrollout"}, False),
    ({"VERL_USE_EXTERNAL_PLUGINS": "Other, SpecRollout"}, False),  # veRL lower-cases and strips
    ({"VERL_USE_EXTERNAL_PLUGINS": "none"}, True),
    ({"VERL_USE_EXTERNAL_PLUGINS": ""}, True),  # an empty allow-list
    ({"VERL_USE_EXTERNAL_PLUGINS": "other"}, True),
    ({"VERL_USE_EXTERNAL_PLUGINS": "none", "VERL_USE_EXTERNAL_MODULES": "x,verl_specrollout.register_rollout"}, False),
    ({"VERL_USE_EXTERNAL_PLUGINS": "none", "VERL_USE_EXTERNAL_MODULES": "verl_specrollout"}, True),
])
def test_plugin_allowed_mirrors_verl(env, excluded):
    msg = sc.check_plugin_allowed(env)
    assert (msg is not None) == excluded
    if excluded:
        assert msg.startswith("verl-specrollout:") and "\n" not in msg
        assert f"VERL_USE_EXTERNAL_PLUGINS={env['VERL_USE_EXTERNAL_PLUGINS']!r}" in msg and "specrollout.enable" in msg


def test_entry_point_names_match_pyproject():
    verl_eps = {ep.name: ep.value for ep in md.entry_points(group="verl.plugins")}
    vllm_eps = {ep.name: ep.value for ep in md.entry_points(group="vllm.general_plugins")}
    assert verl_eps.get(sc.VERL_ENTRY_POINT) == sc.PLUGIN_MODULE
    assert vllm_eps.get(sc.VLLM_ENTRY_POINT, "").startswith("verl_specrollout.vllm_adapter.engine_patches")


# ----------------------------------------------------------------------------- in the rollout server
def _run(code: str, **env_extra) -> tuple:
    env = {k: v for k, v in os.environ.items()
           if k not in ("VERL_USE_EXTERNAL_PLUGINS", "VERL_USE_EXTERNAL_MODULES", "VLLM_PLUGINS",
                        sc.SERVER_CHECKED_ENV, "SPECROLLOUT_PLATFORM", "VERL_PLATFORM")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=400, env=env)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    return out.stdout + out.stderr, out.stdout


def _lines(text: str) -> list:
    return [line for line in text.splitlines() if "verl-specrollout: VERL_USE_EXTERNAL_PLUGINS" in line]


# What veRL does in a rollout server process: the replica class comes from veRL's registry (ours when
# our veRL plugin was loaded), the server class from that replica (ours with specrollout.enable),
# and vLLMHttpServer.launch_server builds vLLM's argument parser, which loads vLLM's general plugins.
# The CPU platform is installed through VERL_USE_EXTERNAL_MODULES so that veRL's vLLM server module
# imports on this machine whatever VERL_USE_EXTERNAL_PLUGINS says.
SERVER_CODE = """
import asyncio, os, subprocess, sys
import verl, verl_specrollout
from verl.workers.config import RolloutConfig
from verl.workers.rollout.replica import RolloutReplicaRegistry
from verl.workers.rollout.vllm_rollout.vllm_async_server import vLLMHttpServer
from verl_specrollout.verl_adapter import startup_checks as sc
print("REGISTERED", verl_specrollout._registered, "ALLOWED", sc.check_plugin_allowed() is None, flush=True)
replica = RolloutReplicaRegistry.get("vllm")
if replica.__module__.startswith("verl_specrollout"):
    from verl_specrollout.verl_adapter.server import SpecRolloutHttpServer as server_cls
else:
    server_cls = vLLMHttpServer
server = object.__new__(server_cls)
server.config = RolloutConfig(name="vllm", custom={"specrollout": {"enable": True}})

async def launch_server(self):
    import vllm.plugins
    vllm.plugins.load_general_plugins()
    from verl_specrollout.vllm_adapter.engine_patches import register
    register()  # vLLM may load its plugins again in this process: still one line

asyncio.run(launch_server(server))
sys.stdout.flush(); sys.stderr.flush()
# vLLM's engine-core / worker processes inherit the environment and load the plugin again.
child = subprocess.run([sys.executable, "-c", "import verl; from verl_specrollout.verl_adapter import "
                        "startup_checks as sc; print('CHILD', sc.check_rollout_server_process())"],
                       capture_output=True, text=True)
print(child.stdout + child.stderr)
"""
CPU_ENV = {"SPECROLLOUT_PLATFORM": "cpu",
           "VERL_USE_EXTERNAL_MODULES": "verl_specrollout.cpu_platform.verl_activate"}


@pytest.mark.parametrize("policy", ["none", "auto"])
def test_rollout_server_logs_one_error_when_verl_skips_our_plugin(policy):
    text, _ = _run(SERVER_CODE, VERL_USE_EXTERNAL_PLUGINS=policy, **CPU_ENV)
    excluded = policy == "none"
    assert f"REGISTERED {not excluded} ALLOWED {not excluded}" in text  # our mirror agrees with veRL
    lines = _lines(text)
    if excluded:
        assert len(lines) == 1, text[-3000:]
        assert "ERROR" in lines[0] and "VERL_USE_EXTERNAL_PLUGINS='none'" in lines[0]
        assert "specrollout.enable=true is ignored" in lines[0]
    else:
        assert lines == [], lines
    assert "CHILD None" in text


def test_plugin_without_a_verl_server_warns_once():
    # The plain call the brief asks for: veRL imported under the exclusion, then what vLLM calls.
    # No veRL server on the stack, so the rollout config is unknown: a WARNING, not an ERROR.
    code = ("import verl, verl_specrollout\n"
            "from verl_specrollout.verl_adapter import startup_checks as sc\n"
            "print('REGISTERED', verl_specrollout._registered)\n"
            "print('RESULT1', sc.check_rollout_server_process() is not None)\n"
            "print('RESULT2', sc.check_rollout_server_process())\n")
    text, _ = _run(code, VERL_USE_EXTERNAL_PLUGINS="none")
    lines = _lines(text)
    assert "REGISTERED False" in text and "RESULT1 True" in text and "RESULT2 None" in text
    assert len(lines) == 1 and "WARNING" in lines[0].upper(), text[-3000:]


@pytest.mark.parametrize("env", [
    {"VERL_USE_EXTERNAL_PLUGINS": "specrollout, other"},
    {"VERL_USE_EXTERNAL_PLUGINS": "none", "VERL_USE_EXTERNAL_MODULES": "verl_specrollout.register_rollout"},
])
def test_plugin_silent_when_verl_loaded_us(env):
    code = ("import verl, verl_specrollout\n"
            "from verl_specrollout.verl_adapter import startup_checks as sc\n"
            "print('REGISTERED', verl_specrollout._registered, 'ALLOWED', sc.check_plugin_allowed() is None)\n"
            "print('RESULT', sc.check_rollout_server_process())\n")
    text, _ = _run(code, **env)
    assert "REGISTERED True ALLOWED True" in text and "RESULT None" in text
    assert _lines(text) == []


def test_server_process_guard_names_disaggregation_when_that_is_why(monkeypatch):
    # In-process: a veRL server on the stack whose rollout config asks for us, started by veRL's PD
    # replica (our veRL plugin was loaded, the env var is fine).
    import verl  # noqa: F401
    from omegaconf import OmegaConf

    import verl_specrollout
    from verl_specrollout import compat

    module, _, name = compat.VERL_VLLM_SERVER.partition(":")
    fake_module = type(sys)("fake_server_module")

    class FakeServer:
        pass

    setattr(fake_module, name, FakeServer)
    monkeypatch.setitem(sys.modules, module, fake_module)
    monkeypatch.setattr(sc, "_server_checked", False)
    monkeypatch.setattr(verl_specrollout, "_registered", True)
    server = FakeServer()
    server.config = OmegaConf.create({"custom": {"specrollout": {"enable": True}}, "disaggregation": {"enabled": True}})
    env: dict = {}

    def launch_server(self):
        return sc.check_rollout_server_process(environ=env)

    msg = launch_server(server)
    assert msg is not None and "disaggregation.enabled" in msg and env.get(sc.SERVER_CHECKED_ENV) == "1"
    assert launch_server(server) is None  # once

    # The same server without specrollout.enable: nothing to say.
    monkeypatch.setattr(sc, "_server_checked", False)
    env.clear()
    server.config = OmegaConf.create({"custom": {"specrollout": {"enable": False}}, "disaggregation": {"enabled": True}})
    assert launch_server(server) is None and env.get(sc.SERVER_CHECKED_ENV) == "1"


def test_docs_show_the_messages_verbatim(compose):
    """docs/compatibility-guards.md quotes each line a user sees; keep it in sync."""
    doc = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "compatibility-guards.md")).read()
    messages = [sc.check_plugin_allowed({"VERL_USE_EXTERNAL_PLUGINS": "none"}),
                _raises(sc.check_job, compose(*EAGLE, *MTP), environ=NO_ENV),
                _raises(sc.check_job, compose(*LEARNER, *BYPASS), environ=NO_ENV),
                _raises(sc.check_job, compose(*EAGLE, *DISAGG), environ=NO_ENV),
                _raises(sc.check_job, compose(*EAGLE, "actor_rollout_ref.rollout.name=sglang"), environ=NO_ENV),
                *sc.check_job(compose(*EAGLE), environ={"VLLM_PLUGINS": "other"})]
    assert len(messages) == 6
    for msg in messages:
        assert msg in doc, msg
