"""Registration with veRL, called from the `verl.plugins` entry point in every process that
imports veRL.

* veRL's "vllm" rollout loader -> our replica (verl_adapter/server.py), which is veRL's own class
  unless ``specrollout.enable``. The loader is lazy, like veRL's own, so importing verl stays cheap.
* post-import patches of the actor worker (capture + learner), of both trainer families and
  veRL's step logger (publish dir, start-up checks, per-step metrics: verl_adapter/trainer_hooks.py)
  and of the rollout server manager (a prompt's samples on one replica for group
  drafting, verl_adapter/group_router.py): pass-throughs unless the run's config turns them on.
"""

from __future__ import annotations

import logging

from verl_specrollout import compat

logger = logging.getLogger(__name__)


def _load_replica():
    from verl_specrollout.verl_adapter.server import SpecRolloutReplica

    return SpecRolloutReplica


def _patch_server_manager(module) -> None:
    from verl_specrollout.verl_adapter.group_router import patch_server_manager

    patch_server_manager(module)


def install() -> None:
    from verl_specrollout.verl_adapter.actor_hooks import patch_actor_worker
    from verl_specrollout.verl_adapter.import_hook import patch_on_import
    from verl_specrollout.verl_adapter import trainer_hooks

    registry = compat.resolve(compat.VERL_REPLICA_REGISTRY)
    registry.register(compat.VERL_VLLM_ROLLOUT_NAME, _load_replica)
    patch_on_import(compat.VERL_ACTOR_WORKER_MODULE, patch_actor_worker)
    trainer_hooks.install()
    patch_on_import(compat.VERL_SERVER_MANAGER_MODULE, _patch_server_manager)
    logger.debug("verl-specrollout: registered rollout replica for %r", compat.VERL_VLLM_ROLLOUT_NAME)
