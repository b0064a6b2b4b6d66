"""Registration with veRL: point veRL's "vllm" rollout at our replica class.

Called from the `verl.plugins` entry point in every process that imports veRL.
The loader is lazy, like veRL's own, so importing verl stays cheap.
"""

from __future__ import annotations

import logging

from verl_specrollout.engine import compat

logger = logging.getLogger(__name__)


def _load_replica():
    from verl_specrollout.engine.verl_server import SpecRolloutReplica

    return SpecRolloutReplica


def install() -> None:
    registry = compat.resolve(compat.VERL_REPLICA_REGISTRY)
    registry.register(compat.VERL_VLLM_ROLLOUT_NAME, _load_replica)
    # Online draft learning (capture, learner, per-step metrics): post-import patches that stay
    # pass-throughs unless specrollout.enable and specrollout.learner.enable are set.
    from verl_specrollout.engine.verl_actor_hooks import install as install_actor_hooks

    install_actor_hooks()
    logger.debug("verl-specrollout: registered rollout replica for %r", compat.VERL_VLLM_ROLLOUT_NAME)
