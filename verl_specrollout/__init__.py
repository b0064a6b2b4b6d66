"""verl-specrollout: concurrency-aware speculative rollouts with online draft learning for veRL.

`register()` is the `verl.plugins` entry point: `import verl` calls it in every Ray
process. veRL swallows plugin errors at DEBUG level, so we log our own at WARNING.
Nothing heavy is imported at module import time.
"""

import logging
import os

__version__ = "0.1.0"
logger = logging.getLogger("verl_specrollout")

_registered = False

# Environment switches that select the CPU platform (verl_specrollout/cpu_platform: veRL and
# vLLM on a machine without a GPU; it refuses to install where CUDA is available).
# Ray workers and vLLM worker processes inherit them from the driver.
CPU_PLATFORM_ENVS = ("SPECROLLOUT_PLATFORM", "VERL_PLATFORM")


def cpu_platform_requested() -> bool:
    """True when the user asked for the CPU platform; ``verl_specrollout.cpu_platform.verl_platform``
    is never imported otherwise."""
    return any(os.environ.get(name, "").strip().lower() == "cpu" for name in CPU_PLATFORM_ENVS)


def register() -> None:
    """Hook our vLLM rollout server into veRL's rollout registry (idempotent)."""
    global _registered
    if _registered:
        return
    try:
        from verl_specrollout.verl_adapter.registration import install

        install()
        _registered = True
    except Exception as exc:  # never break `import verl`, but never fail silently either
        logger.warning("verl-specrollout: registration with veRL failed, speculative rollout is OFF: %r", exc, exc_info=True)
