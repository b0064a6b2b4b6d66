"""Start-up guards: every known way that ``specrollout.enable=true`` could silently do nothing.

Each case gets one clear line at start-up. A *hard error* (SpecRolloutConfigError, raised) where the
user's request cannot be honoured at all and the job would burn its GPUs without it; a *warning*
(logged once per process, returned) where the job is still what was asked for, minus a part.

==============================  =========================================  ===============================
case                            why it would be silent                     what we do
==============================  =========================================  ===============================
veRL plugin allow-list          VERL_USE_EXTERNAL_PLUGINS excludes          ERROR line in the rollout
(VERL_USE_EXTERNAL_PLUGINS)     ``specrollout``: none of our veRL hooks     server (vLLM loads our general
                                run, veRL's own vLLM server starts          plugin there):
                                                                            ``check_rollout_server_process``
veRL's MTP rollout + ours       two speculative configs; veRL merges        error (check_job, check_rollout)
                                ours over MTP's, MTP is silently lost
rollout_correction bypass_mode  compute_log_prob never runs: the online     error with learner.enable
                                learner gets no data, the draft never       (silent without the learner:
                                updates                                     speculation is unaffected)
PD disaggregation               veRL picks vLLMPDReplica directly, never    error (check_job, check_rollout)
                                our replica: no speculation at all
rollout.name != vllm            our replica is registered for ``vllm``      error (check_job, check_rollout)
VLLM_PLUGINS allow-list         vLLM never loads our general plugin: K=0    warning; error for group
                                draft skip, group drafting and the CPU      methods and the CPU platform
                                platform's lossless fix are off
==============================  =========================================  ===============================

Callers: ``check_job(config)`` once in the trainer process before workers start (trainer
construction, both veRL trainers); ``check_rollout(rollout_config, model_config)`` in our replica's
``__init__``; ``check_rollout_server_process()`` from our vLLM general plugin
(vllm_adapter/engine_patches.py), the only code of ours that still runs when veRL skipped our plugin.
Module import is light (no torch, vLLM, veRL or config): vLLM imports it in every engine process.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, List, Mapping, MutableMapping, Optional

from verl_specrollout.compat import (  # veRL / vLLM names live in compat
    VERL_PLUGINS_ENV, VERL_PLUGINS_DEFAULT, VERL_PLUGINS_ALL, VERL_PLUGINS_NONE,
    VERL_MODULES_ENV, VLLM_PLUGINS_ENV, VERL_KEY_ROLLOUT, VERL_KEY_MODEL_MTP,
    VERL_ROLLOUT_NAME, VERL_ROLLOUT_MTP, VERL_MTP_ENABLE, VERL_MTP_ENABLE_ROLLOUT,
    VERL_ROLLOUT_DISAGG_ENABLED, VERL_KEY_BYPASS_MODE, VERL_PD_REPLICA_NAME, VERL_SERVER_CONFIG_ATTR)

from verl_specrollout.errors import SpecRolloutConfigError

logger = logging.getLogger("verl_specrollout.startup_checks")
# Inside vLLM processes: a child of vLLM's logger, so vLLM's handler prints it.
vllm_logger = logging.getLogger("vllm.specrollout")

# Ours (pyproject.toml entry points; tests/unit/test_startup_checks_on_cpu.py checks them).
VERL_ENTRY_POINT = "specrollout"
VLLM_ENTRY_POINT = "specrollout"
PLUGIN_MODULE = "verl_specrollout.register_rollout"
SPEC_KEY = "actor_rollout_ref.rollout.custom.specrollout"
OUR_SERVER = ("verl_specrollout.verl_adapter.server", "SpecRolloutHttpServer")
# Set in a rollout server process once it has been checked, so that vLLM's engine-core and worker
# processes (which inherit the environment and load our plugin again) stay quiet.
SERVER_CHECKED_ENV = "SPECROLLOUT_SERVER_CHECKED"

_logged: set = set()  # warnings already logged in this process (check_rollout runs once per replica)
_server_checked = False


# ----------------------------------------------------------------------------- helpers
def _select(obj: Any, path: str) -> Any:
    """``obj.a.b`` for DictConfig, dicts and (veRL) dataclasses alike; None when absent or unset."""
    for part in path.split("."):
        if obj is None:
            return None
        try:
            if isinstance(obj, Mapping) or hasattr(obj, "_get_node"):  # dict / DictConfig
                obj = obj.get(part)
            else:
                obj = getattr(obj, part, None)
        except Exception:  # a missing mandatory value (???) or a broken interpolation: not ours to judge
            return None
    return obj


def _spec_config(rollout: Any):
    from verl_specrollout.config import SpecRolloutConfig

    return SpecRolloutConfig.from_rollout_config(rollout)


def _warn(message: str, warnings: List[str]) -> None:
    if message in _logged:
        return
    _logged.add(message)
    logger.warning(message)
    warnings.append(message)


# ----------------------------------------------------------------------------- the cases
def check_plugin_allowed(environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """The one-line message if veRL, under ``environ``, does not load our ``verl.plugins`` entry point
    (so it never registers our rollout replica and hooks), else None. Mirrors verl/__init__.py."""
    raw = environ.get(VERL_PLUGINS_ENV)
    policy = (VERL_PLUGINS_DEFAULT if raw is None else raw).strip().lower()
    if policy == VERL_PLUGINS_ALL:
        return None
    if policy != VERL_PLUGINS_NONE and VERL_ENTRY_POINT in {n.strip() for n in policy.split(",") if n.strip()}:
        return None
    if PLUGIN_MODULE in (environ.get(VERL_MODULES_ENV) or "").split(","):
        return None  # imported by `import verl` itself, which registers us just the same
    return (f"verl-specrollout: {VERL_PLUGINS_ENV}={raw!r} excludes the veRL plugin '{VERL_ENTRY_POINT}', so veRL "
            f"never registers it and {SPEC_KEY}.enable=true is ignored (rollouts run without speculative "
            f"decoding); unset {VERL_PLUGINS_ENV} (default {VERL_PLUGINS_DEFAULT}) or add {VERL_ENTRY_POINT} to "
            f"its list, or set {VERL_MODULES_ENV}={PLUGIN_MODULE}")


def _check_rollout_name(rollout: Any) -> None:
    # Error: our replica is registered under veRL's "vllm" rollout only; any other engine never
    # sees the specrollout block, so the whole request is ignored.
    name = _select(rollout, VERL_ROLLOUT_NAME)
    if name is not None and name != "vllm":
        raise SpecRolloutConfigError(
            f"verl-specrollout: {VERL_KEY_ROLLOUT}.name={name} but speculative rollout only runs with veRL's "
            f"vllm rollout, so {SPEC_KEY}.enable=true would be ignored; set {VERL_KEY_ROLLOUT}.name=vllm or "
            f"{SPEC_KEY}.enable=false")


def _check_disaggregation(rollout: Any) -> None:
    # Error: with disaggregation veRL's get_rollout_replica_class returns vLLMPDReplica directly (it
    # never asks the replica registry where our SpecRolloutReplica sits), and that replica starts
    # veRL's own vLLMHttpServer: no speculation at all, on every replica. Same truthiness as veRL.
    if bool(_select(rollout, VERL_ROLLOUT_DISAGG_ENABLED)):
        raise SpecRolloutConfigError(
            f"verl-specrollout: {VERL_KEY_ROLLOUT}.{VERL_ROLLOUT_DISAGG_ENABLED}=true is not supported: veRL then "
            f"runs its prefill/decode replica ({VERL_PD_REPLICA_NAME}) with its own vLLM servers, which never "
            f"start speculative decoding; set {VERL_KEY_ROLLOUT}.{VERL_ROLLOUT_DISAGG_ENABLED}=false or "
            f"{SPEC_KEY}.enable=false")


def _check_mtp(rollout: Any) -> None:
    # Error: vLLMHttpServer.launch_server builds speculative_config from rollout.mtp when
    # mtp.enable and mtp.enable_rollout, merging the engine kwargs' speculative_config (ours) over it:
    # our method wins, MTP drafting is silently gone while veRL still runs its MTP-only paths (sleep
    # level 1, MTP drafter weight sync, MTP metrics). One engine has one drafter: the user must pick.
    mtp = _select(rollout, VERL_ROLLOUT_MTP)
    if bool(_select(mtp, VERL_MTP_ENABLE)) and bool(_select(mtp, VERL_MTP_ENABLE_ROLLOUT)):
        raise SpecRolloutConfigError(
            f"verl-specrollout: {VERL_KEY_MODEL_MTP}.enable=true with {VERL_KEY_MODEL_MTP}.enable_rollout=true "
            f"(veRL's MTP speculative rollout) and {SPEC_KEY}.enable=true both set vLLM's speculative_config, "
            f"and one engine runs one drafter; set {VERL_KEY_MODEL_MTP}.enable_rollout=false to use "
            f"specrollout, or {SPEC_KEY}.enable=false to keep MTP")


def _check_bypass(config: Any, spec) -> None:
    # Error only with the learner on: in bypass mode both trainers take old_log_probs from the
    # rollout (ray_trainer.fit, v1 trainer_base._compute_old_log_prob) and never call the actor's
    # compute_log_prob, the forward our capture rides on. The learner would get no data and the draft
    # would stay draft_path for the whole job, while the user asked for online learning (and pays for
    # the learner actor). Speculation itself is unaffected, so without the learner this is fine.
    bypass = _select(config, VERL_KEY_BYPASS_MODE)
    if bool(bypass) and spec.learner.enable:
        raise SpecRolloutConfigError(
            f"verl-specrollout: {VERL_KEY_BYPASS_MODE}=true skips the actor's compute_log_prob forward that "
            f"feeds the online draft learner, so with {SPEC_KEY}.learner.enable=true the draft would never "
            f"update; set {VERL_KEY_BYPASS_MODE}=false, or {SPEC_KEY}.learner.enable=false to speculate with "
            f"the fixed draft_path")


def _check_vllm_plugins(spec, environ: Mapping[str, str], warnings: List[str]) -> None:
    """VLLM_PLUGINS without our entry point: vLLM never calls vllm_adapter/engine_patches.py's register."""
    raw = environ.get(VLLM_PLUGINS_ENV)
    if raw is None or VLLM_ENTRY_POINT in raw.split(","):
        return
    from verl_specrollout import CPU_PLATFORM_ENVS

    head = (f"verl-specrollout: {VLLM_PLUGINS_ENV}={raw!r} excludes vLLM's general plugin '{VLLM_ENTRY_POINT}', "
            f"so vLLM never loads verl_specrollout.vllm_adapter.engine_patches")
    fix = f"add {VLLM_ENTRY_POINT} to {VLLM_PLUGINS_ENV} (comma list, no spaces) or unset it"
    # Error: group drafting is that plugin (it wraps vLLM's model runner); without it `group` is plain
    # ngram drafting and `eagle3+group` plain EAGLE-3 -- not the method asked for.
    if spec.group_drafting:
        raise SpecRolloutConfigError(f"{head}: method={spec.method} (Best-of-N group drafting) needs it; {fix}")
    # Error: on the CPU test platform that plugin carries the vLLM-CPU kernel fix without which
    # speculative sampling at T > 0 is not the target's distribution.
    if any((environ.get(name) or "").strip().lower() == "cpu" for name in CPU_PLATFORM_ENVS):
        raise SpecRolloutConfigError(f"{head}: the CPU platform's lossless sampling fix needs it; {fix}")
    # Warning: speculation still runs (scheduler and draft reload do not depend on the plugin); only
    # the K=0 draft skip is lost, so K=0 steps still pay a draft pass.
    if spec.planner.skip_draft_at_k0 and spec.has_draft_model:
        _warn(f"{head}: planner.skip_draft_at_k0 is off (K=0 steps still run a draft pass); {fix}", warnings)


# ----------------------------------------------------------------------------- public API
def check_job(config: Any, environ: Optional[Mapping[str, str]] = None) -> List[str]:
    """Check the full Hydra root config (veRL's ppo_trainer.yaml plus overrides) once, in the trainer
    process, before workers start. Raises SpecRolloutConfigError for a hard error; returns the warnings
    it logged. Nothing is checked unless ``specrollout.enable`` is true."""
    environ = os.environ if environ is None else environ
    rollout = _select(config, VERL_KEY_ROLLOUT)
    spec = _spec_config(rollout)  # a malformed specrollout block raises its own clear error here
    if not spec.enable:
        return []
    _check_rollout_name(rollout)
    _check_disaggregation(rollout)
    _check_mtp(rollout)
    _check_bypass(config, spec)
    warnings: List[str] = []
    _check_vllm_plugins(spec, environ, warnings)
    return warnings


def check_rollout(rollout_config: Any, model_config: Any = None,
                  environ: Optional[Mapping[str, str]] = None) -> List[str]:
    """Check veRL's RolloutConfig (dataclass or DictConfig) in our replica's ``__init__`` (trainer
    process): the rollout-level cases again, for trainers or recipes that build replicas without going
    through check_job. ``model_config`` (HFModelConfig) is accepted for the call site's stability; no
    current case needs it (the MTP flag vLLM acts on is the rollout's copy). Raises or returns the
    warnings logged (each warning once per process)."""
    del model_config
    environ = os.environ if environ is None else environ
    spec = _spec_config(rollout_config)
    if not spec.enable:
        return []
    _check_rollout_name(rollout_config)
    _check_disaggregation(rollout_config)
    _check_mtp(rollout_config)
    warnings: List[str] = []
    _check_vllm_plugins(spec, environ, warnings)
    return warnings


# ----------------------------------------------------------------------------- inside vLLM
def _class_if_loaded(module: str, name: str):
    mod = sys.modules.get(module)
    return getattr(mod, name, None) if mod is not None else None


def _find_verl_server(frame) -> Any:
    """veRL's vLLMHttpServer on the call stack (vLLM loads its general plugins from the server's
    launch_server, while it builds its argument parser), or None."""
    from verl_specrollout import compat

    module, _, name = compat.VERL_VLLM_SERVER.partition(":")
    cls = _class_if_loaded(module, name)
    if cls is None:
        return None
    depth = 0
    while frame is not None and depth < 256:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, cls):
            return candidate
        frame, depth = frame.f_back, depth + 1
    return None


def _asked_for(rollout: Any) -> bool:
    value = _select(rollout, "custom.specrollout.enable")
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _veRL_registered() -> bool:
    import verl_specrollout

    return bool(getattr(verl_specrollout, "_registered", False))


def check_rollout_server_process(environ: Optional[MutableMapping[str, str]] = None, frame=None) -> Optional[str]:
    """Called by our vLLM general plugin in every vLLM process; never raises. Logs, at most once per
    process tree, why speculative rollout is off in a veRL rollout server that runs veRL's own
    vLLMHttpServer although its rollout config says ``specrollout.enable=true`` (the allow-list case,
    and any other way our replica was bypassed). Returns the line logged, or None.

    ERROR, not raise: this runs inside vLLM's plugin loader, and the RL job itself is still valid;
    where the config alone tells (check_job, in the trainer), the same situations are hard errors.
    """
    try:
        return _check_server_process(os.environ if environ is None else environ,
                                     frame if frame is not None else sys._getframe(1))
    except Exception as exc:  # a guard must never stop vLLM from starting
        vllm_logger.debug("verl-specrollout: rollout server check failed: %r", exc)
        return None


def _check_server_process(environ: MutableMapping[str, str], frame) -> Optional[str]:
    global _server_checked
    if _server_checked or environ.get(SERVER_CHECKED_ENV):
        return None
    server = _find_verl_server(frame)
    if server is None:
        # No veRL server on this stack: a vLLM child process whose parent was not a veRL server (it
        # would have set SERVER_CHECKED_ENV), or a stack this veRL/vLLM pair builds differently. We
        # cannot read the rollout config here, so this is a warning, and only where veRL is imported
        # in this process and the allow-list is why our registration did not happen.
        if "verl" not in sys.modules or _veRL_registered():
            return None
        message, level = check_plugin_allowed(environ), logging.WARNING
        if message is None:
            return None
    else:
        _server_checked = True
        environ[SERVER_CHECKED_ENV] = "1"
        ours = _class_if_loaded(*OUR_SERVER)
        config = getattr(server, VERL_SERVER_CONFIG_ATTR, None)
        if (ours is not None and isinstance(server, ours)) or not _asked_for(config):
            return None
        message, level = check_plugin_allowed(environ) or _why_bypassed(server, config), logging.ERROR
    _server_checked = True
    environ[SERVER_CHECKED_ENV] = "1"
    vllm_logger.log(level, message)
    return message


def _why_bypassed(server: Any, config: Any) -> str:
    if bool(_select(config, VERL_ROLLOUT_DISAGG_ENABLED)):
        try:
            _check_disaggregation(config)
        except SpecRolloutConfigError as exc:
            return str(exc)
    cause = ("verl-specrollout's registration with veRL did not run in this process (see the log for "
             "'registration with veRL failed')" if not _veRL_registered() else
             "a rollout replica class other than verl-specrollout's started it")
    return (f"verl-specrollout: {SPEC_KEY}.enable=true but this rollout server is veRL's own "
            f"{type(server).__name__} without speculative decoding: {cause}; keep veRL's vllm rollout replica "
            f"(do not override rollout_replica_class)")
