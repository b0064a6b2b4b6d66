"""Route the samples of one prompt to one rollout replica (group drafting needs them together).

Group drafting (vllm_adapter/group_proposer.py) drafts a request from its siblings -- the other
samples of its prompt -- and from earlier responses to the same prompt, all held in the index of
the engine worker that serves it. veRL's default router (sticky per request id, otherwise the
least-loaded replica) scatters a prompt's G samples over the replicas, so with R replicas a
request sees about G/R of its siblings, and a prompt's next epoch lands on a replica that never
saw its history.

This router is veRL's own load balancer with one change to the choice of a new request's replica:
consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with
Bounded Loads", 2018). Each prompt ranks the replicas by a rendezvous hash of (prompt, replica),
the same ranking in every process and every epoch, and takes the first replica whose in-flight
count is below ``ceil((1 + slack) * (in_flight + 1) / replicas)``. So a prompt's samples and its
later epochs go to the same replica, and no replica carries more than (1 + slack) times the mean
load: when its first choice is full, a sample spills to the prompt's second choice (and that spill
is the same for all prompts that hash alike, so load stays spread). Replicas added or removed move
only the prompts that ranked them first.

It reads the prompt token ids, which veRL sends to a router that asks for them
(``require_acquire_fields``); multi-turn requests stay sticky by request id as in veRL.

Turned on for group methods when the job has no router of its own (verl_adapter/registration.py);
``specrollout.group.route_by_prompt=false`` keeps veRL's router. Used as veRL's ``load_balancer_cls``
(a plain class veRL wraps in ``ray.remote``) or from a router YAML (``router_class:`` this class,
optional ``slack:``).
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Any, Dict, Optional, Sequence

from verl_specrollout import compat

logger = logging.getLogger("verl_specrollout.group_router")

DEFAULT_SLACK = 0.25


def prompt_key(prompt_ids: Sequence[int]) -> bytes:
    """Digest of a prompt's token ids; the same in every process (unlike ``hash``)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(",".join(map(str, prompt_ids)).encode())
    return h.digest()


def replica_order(key: bytes, server_ids: Sequence[str]) -> list:
    """Replicas ranked for one prompt by rendezvous hash: highest (key, replica) digest first."""
    def weight(sid: str) -> bytes:
        return hashlib.blake2b(key + sid.encode(), digest_size=8).digest()

    return sorted(server_ids, key=weight, reverse=True)


def bounded_choice(order: Sequence[str], inflight: Dict[str, int], slack: float) -> str:
    """First replica in `order` under the bounded-load capacity; the least loaded if none is
    (cannot happen while slack >= 0, kept for safety)."""
    cap = math.ceil((1.0 + slack) * (sum(inflight.values()) + 1) / max(len(inflight), 1))
    for sid in order:
        if inflight[sid] < cap:
            return sid
    return min(order, key=lambda s: inflight[s])


class GroupAffinityLoadBalancer(compat.resolve(compat.VERL_LOAD_BALANCER)):
    """veRL's load balancer; a new request goes to its prompt's replica under bounded loads."""

    def __init__(self, servers, config: Optional[dict] = None, slack: float = DEFAULT_SLACK, **kwargs):
        # veRL builds a `load_balancer_cls` with (servers=..., max_cache_size=...) and a router-YAML
        # class with (servers, yaml_dict): accept both.
        if isinstance(config, dict):
            slack = float(config.get("slack", slack))
        if slack < 0:
            raise ValueError(f"group router slack must be >= 0, got {slack}")
        super().__init__(servers, **kwargs)
        self._slack = slack
        self._affinity = {"placed": 0, "first_choice": 0}

    def require_acquire_fields(self) -> list:
        return [compat.VERL_ACQUIRE_PROMPT_IDS]

    def acquire_server(self, request_id: str, prompt_ids: Optional[Sequence[int]] = None, **extra):
        sticky = getattr(self, compat.VERL_LB_STICKY_ATTR)
        inflight = getattr(self, compat.VERL_LB_INFLIGHT_ATTR)
        if prompt_ids is None or request_id in sticky or not inflight:
            return super().acquire_server(request_id)
        servers = getattr(self, compat.VERL_LB_SERVERS_ATTR)
        order = replica_order(prompt_key(prompt_ids), list(inflight))
        sid = bounded_choice(order, inflight, self._slack)
        self._affinity["placed"] += 1
        self._affinity["first_choice"] += int(sid == order[0])
        sticky[request_id] = sid
        inflight[sid] += 1
        return sid, servers[sid]

    def get_status(self) -> dict:
        status = super().get_status()
        status["group_affinity"] = dict(self._affinity, slack=self._slack)
        return status


def wants_group_router(rollout_config: Any) -> bool:
    """Group method on, the user kept veRL's default router, and route_by_prompt not switched off."""
    from verl_specrollout.verl_adapter.actor_hooks import spec_config

    cfg = spec_config(rollout_config)
    if not (cfg.enable and cfg.group_drafting and cfg.group.route_by_prompt):
        return False
    if getattr(rollout_config, compat.VERL_ROUTER_CONFIG_PATH_KEY, None):
        logger.warning("verl-specrollout: rollout.%s is set; group drafting keeps that router, so a prompt's "
                       "samples may be split over replicas (fewer sibling drafts)", compat.VERL_ROUTER_CONFIG_PATH_KEY)
        return False
    return True


def patch_server_manager(module) -> None:
    """Default veRL's LLMServerManager to the prompt-affinity router for group methods."""
    from verl_specrollout.verl_adapter.import_hook import wrap_once

    cls = getattr(module, compat.VERL_SERVER_MANAGER_CLASS)

    def make(original):
        def __init__(self, config, *args, **kwargs):
            if kwargs.get("load_balancer_cls") is None and len(args) < 4:
                rollout = config.actor_rollout_ref.rollout
                if wants_group_router(rollout):
                    kwargs["load_balancer_cls"] = GroupAffinityLoadBalancer
                    logger.info("verl-specrollout: prompt-affinity router (a prompt's samples on one replica)")
            original(self, config, *args, **kwargs)

        return __init__

    wrap_once(cls, "__init__", make)
