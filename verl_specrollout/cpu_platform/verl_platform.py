"""CPU testing platform for veRL 0.9.1 + vLLM-CPU: one ``install()`` that applies every workaround.

Opt-in only: active when ``SPECROLLOUT_PLATFORM=cpu`` (or ``VERL_PLATFORM=cpu``) is set in the
driver's environment; Ray's local workers and vLLM's worker processes inherit it. It refuses to
run where CUDA is available, so it can never change a GPU cluster.

Most of the work is done the way veRL intends: a ``cpu`` platform class registered in veRL's
platform layer (``verl/plugin/platform``) and selected with ``VERL_PLATFORM=cpu`` (see
``verl_platform_cpu.py``). What the platform layer cannot express is patched here, each in a small
function guarded by a check that the thing it touches exists. Settings that are plain config
(TransferQueue's storage units for the V1 trainer, ``rollout.enable_sleep_mode=False``, Ray's logical GPUs, fsdp2, sdpa)
are Hydra overrides: see ``cpu_overrides()`` and ``verl_specrollout/e2e/grpo_cpu.py``.

Entry points: ``maybe_install()`` (idempotent, never raises) at import time of the package's
``verl.plugins`` entry-point module (veRL 0.9.1 only *imports* entry points, ``ep.load()``, it
never calls them), or ``VERL_USE_EXTERNAL_MODULES=verl_specrollout.cpu_platform.verl_activate``.
Both run inside ``import verl``, early enough. ``actor_rollout_ref.model.external_lib`` is too
late: the driver has already imported veRL's vLLM version check by then.
"""

from __future__ import annotations

import logging
import os

from verl_specrollout import cpu_platform_requested

logger = logging.getLogger("verl_specrollout.cpu")

SELECTOR_ENV = "SPECROLLOUT_PLATFORM"
PLATFORM_NAME = "cpu"

# --- veRL 0.9.1 / vLLM 0.31 / torch names this module touches, in one place. ---
VERL_PLATFORM_MODULE = "verl.plugin.platform.platform_manager"  # PlatformRegistry, get_platform
VERL_PLATFORM_ENV = "VERL_PLATFORM"  # read by platform_manager._detect_platform_name
VERL_ENGINE_DEVICE_ENV = "VERL_ENGINE_DEVICE"  # read by EngineRegistry.get_engine_cls
VERL_ENGINE_DEVICE_FOR_CPU = "cuda"  # the FSDP engine is registered for ("cuda", "npu") only
VLLM_DIST_NAME, VLLM_CPU_DIST_NAME = "vllm", "vllm-cpu"  # verl/third_party/vllm reads version("vllm")
VLLM_TARGET_DEVICE_ENV = "VLLM_TARGET_DEVICE"  # vllm/platforms/__init__.py: cpu_platform_plugin
VLLM_PLUGIN_GROUP = "vllm.general_plugins"
VLLM_PLUGIN_TARGET = "verl_specrollout.vllm_adapter.engine_patches"  # calls plain_linear_weights.register on CPU

_state = {"installed": False}




def _missing(what: str) -> None:
    logger.warning("verl-specrollout cpu platform: %s not found in this veRL/vLLM/torch; workaround skipped", what)


# --------------------------------------------------------------------------------------------
# Workarounds
# --------------------------------------------------------------------------------------------


def register_verl_cpu_platform() -> None:
    # Blocker: veRL falls back to the `nvidia` platform (torch.cuda, nccl, ...) on a CPU-only host.
    import importlib

    try:
        manager = importlib.import_module(VERL_PLATFORM_MODULE)
    except ImportError:
        return _missing(VERL_PLATFORM_MODULE)
    registry = getattr(manager, "PlatformRegistry", None)
    if registry is None:
        return _missing(f"{VERL_PLATFORM_MODULE}.PlatformRegistry")
    from verl_specrollout.cpu_platform.verl_platform_cpu import make_platform_class

    if registry.get(PLATFORM_NAME) is None:
        registry.register(platform=PLATFORM_NAME)(make_platform_class())
    os.environ[VERL_PLATFORM_ENV] = PLATFORM_NAME
    current = getattr(manager, "_current_platform", None)
    if current is not None and current.device_name != "cpu":
        logger.warning("verl-specrollout cpu platform: veRL platform %r was chosen before install(); "
                       "replacing it", current.device_name)
        manager.set_platform(registry.get(PLATFORM_NAME)())


def reuse_fsdp_engine_on_cpu() -> None:
    # Blocker: "No engine registered for device='cpu'": the FSDP engine registers for cuda/npu only
    # (it runs on CPU with strategy=fsdp2; fsdp1 touches the accelerator).
    os.environ.setdefault(VERL_ENGINE_DEVICE_ENV, VERL_ENGINE_DEVICE_FOR_CPU)


def alias_vllm_cpu_distribution() -> None:
    # Blocker: veRL's vLLM version check reads the `vllm` distribution; the CPU build is `vllm-cpu`.
    import importlib.metadata as md

    try:
        md.version(VLLM_DIST_NAME)
        return  # a real `vllm` distribution: nothing to do
    except md.PackageNotFoundError:
        pass
    try:
        cpu_version = md.version(VLLM_CPU_DIST_NAME)
    except md.PackageNotFoundError:
        return _missing(f"distribution {VLLM_CPU_DIST_NAME}")
    if getattr(md.version, "_specrollout_alias", False):
        return
    original = md.version

    def version(name):
        if name == VLLM_DIST_NAME:
            # Keep vLLM's own CPU detection working: it looks for "cpu" in this version string.
            return f"{cpu_version}+cpu"
        return original(name)

    version._specrollout_alias = True
    md.version = version
    # And tell vLLM directly, so it never depends on the version string.
    os.environ.setdefault(VLLM_TARGET_DEVICE_ENV, "cpu")


def single_gloo_backend_string() -> None:
    # Blocker: veRL builds "cpu:gloo,{device}:{backend}" = "cpu:gloo,cpu:gloo", which torch rejects
    # ("Duplicate device type cpu in backend string").
    import torch.distributed as dist

    original = getattr(dist, "init_process_group", None)
    if original is None:
        return _missing("torch.distributed.init_process_group")
    if getattr(original, "_specrollout_gloo", False):
        return

    def init_process_group(backend=None, *args, **kwargs):
        if isinstance(backend, str) and "," in backend:
            parts = {p.strip() for p in backend.split(",") if p.strip()}
            if parts and all(p in ("gloo", "cpu:gloo") for p in parts):
                backend = "gloo"
        return original(backend, *args, **kwargs)

    init_process_group._specrollout_gloo = True
    dist.init_process_group = init_process_group


def keep_plain_vllm_linear_weights() -> None:
    # Blocker: weight sync into vLLM-CPU ('Parameter' object has no attribute 'weight_loader',
    # BufferError, hang) because vLLM-CPU repacks linear weights and empties layer.weight.
    import importlib.metadata as md
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return  # no vLLM here: nothing to patch
    eps = md.entry_points(group=VLLM_PLUGIN_GROUP)
    if any(ep.value.startswith(VLLM_PLUGIN_TARGET) for ep in eps):
        return  # vLLM itself calls plain_linear_weights.register() in every engine process
    # Fallback until the entry point is registered: patch now. This reaches vLLM's worker
    # processes because they import veRL's worker extension (hence this plugin) before loading
    # the model.
    from verl_specrollout.cpu_platform import plain_linear_weights

    plain_linear_weights.install()


WORKAROUNDS = (
    register_verl_cpu_platform,
    reuse_fsdp_engine_on_cpu,
    alias_vllm_cpu_distribution,
    single_gloo_backend_string,
    keep_plain_vllm_linear_weights,
)


def install() -> None:
    """Apply every CPU workaround in this process (idempotent)."""
    if _state["installed"]:
        return
    os.environ.setdefault(SELECTOR_ENV, PLATFORM_NAME)  # so every child process agrees
    for fix in WORKAROUNDS:
        try:
            fix()
        except Exception as exc:
            logger.warning("verl-specrollout cpu platform: %s failed: %r", fix.__name__, exc, exc_info=True)
    _state["installed"] = True


def maybe_install() -> bool:
    """Install the CPU platform iff it was asked for and no CUDA device is present. Never raises."""
    try:
        if not cpu_platform_requested():
            return False
        import torch

        if torch.cuda.is_available():
            logger.warning("verl-specrollout: %s=cpu ignored: CUDA devices are present", SELECTOR_ENV)
            return False
        install()
        return True
    except Exception as exc:
        logger.warning("verl-specrollout cpu platform: install failed: %r", exc, exc_info=True)
        return False


# TransferQueue (the V1 trainer's batch store) starts this many storage actors plus a controller,
# one logical Ray CPU each; its default (8) + 1 does not fit the 8 logical CPUs given to Ray here,
# and transfer_queue.init then waits forever for placement.
TQ_STORAGE_UNITS = 2


def cpu_overrides(n_gpus: int = 1, num_cpus: int = 8, use_v1: bool = True) -> list[str]:
    """Hydra overrides every veRL 0.9.1 run on this platform needs (config, not code).

    ``use_v1``: veRL's default V1 trainer (TransferQueue batches); False runs the legacy trainer."""
    trainer = ["trainer.use_v1=True",
               f"transfer_queue.backend.SimpleStorage.num_data_storage_units={TQ_STORAGE_UNITS}"] if use_v1 \
        else ["trainer.use_v1=False"]
    return [
        *trainer,
        "trainer.device=cpu",
        f"trainer.n_gpus_per_node={n_gpus}",
        "trainer.nnodes=1",
        f"+ray_kwargs.ray_init.num_gpus={n_gpus}",  # veRL's resource pools need (logical) GPUs
        f"ray_kwargs.ray_init.num_cpus={num_cpus}",  # with 2 logical CPUs the actors never schedule
        "actor_rollout_ref.actor.strategy=fsdp2",  # fsdp1 touches the accelerator
        "critic.strategy=fsdp2",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        "actor_rollout_ref.rollout.name=vllm",
        "+actor_rollout_ref.rollout.enable_sleep_mode=False",  # vLLM-CPU has no sleep mode
    ]
