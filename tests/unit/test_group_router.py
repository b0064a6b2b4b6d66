"""Prompt-affinity routing (verl_adapter/group_router.py) over veRL's own load balancer.

The class is veRL's GlobalRequestLoadBalancer subclass; veRL wraps it in ray.remote, which the last
test does through veRL's own router factory and client.
"""

import asyncio
import collections
import math
import random

import pytest
from omegaconf import OmegaConf

from verl_specrollout.verl_adapter import group_router
from verl_specrollout.verl_adapter.group_router import (
    GroupAffinityLoadBalancer, bounded_choice, prompt_key, replica_order)


def _servers(n):
    return {f"10.0.0.{i}:8000": f"handle-{i}" for i in range(n)}


def test_replica_order_is_stable_and_spreads_prompts():
    ids = list(_servers(4))
    firsts = collections.Counter(replica_order(prompt_key([p, 7, 9]), ids)[0] for p in range(400))
    assert set(firsts) == set(ids)
    assert min(firsts.values()) > 60  # ~100 each: the hash spreads prompts
    key = prompt_key([1, 2, 3])
    assert replica_order(key, ids) == replica_order(key, list(reversed(ids)))  # order of servers irrelevant
    # Removing a replica moves only the prompts that ranked it first.
    keys = [prompt_key([p]) for p in range(300)]
    before = {k: replica_order(k, ids)[0] for k in keys}
    after = {k: replica_order(k, ids[1:])[0] for k in keys}
    assert all(after[k] == before[k] for k in keys if before[k] != ids[0])


def test_bounded_choice_caps_the_load():
    inflight = {"a": 5, "b": 0, "c": 0}
    # cap = ceil(1.25 * 6 / 3) = 3: "a" is full, its next choice takes the request.
    assert bounded_choice(["a", "c", "b"], inflight, 0.25) == "c"
    assert bounded_choice(["b", "a", "c"], inflight, 0.25) == "b"


def test_group_samples_land_on_one_replica_and_load_stays_bounded():
    lb = GroupAffinityLoadBalancer(_servers(4))
    assert lb.require_acquire_fields() == ["prompt_ids"]
    rng = random.Random(0)
    prompts = [[rng.randrange(1000) for _ in range(12)] for _ in range(64)]
    placed = collections.defaultdict(set)
    for g in range(8):  # veRL submits a batch's samples interleaved
        for p, ids in enumerate(prompts):
            sid, handle = lb.acquire_server(f"req-{p}-{g}", prompt_ids=ids)
            assert handle == _servers(4)[sid]
            placed[p].add(sid)
    loads = lb.get_status()["servers"]
    assert sum(loads.values()) == 64 * 8
    assert max(loads.values()) <= math.ceil(1.25 * 64 * 8 / 4)
    together = sum(len(s) == 1 for s in placed.values())
    assert together >= 0.75 * len(prompts), placed  # default router: ~0 prompts kept whole
    assert lb.get_status()["group_affinity"]["placed"] == 64 * 8


def test_next_epoch_of_a_prompt_returns_to_its_replica():
    lb = GroupAffinityLoadBalancer(_servers(4))
    first = {}
    for p in range(16):
        sid, _ = lb.acquire_server(f"e1-{p}", prompt_ids=[p, 1, 2])
        first[p] = sid
        lb.release_server(sid)
    for p in range(16):
        sid, _ = lb.acquire_server(f"e2-{p}", prompt_ids=[p, 1, 2])
        assert sid == first[p]
        lb.release_server(sid)


def test_sticky_request_and_no_prompt_fall_back_to_verl():
    lb = GroupAffinityLoadBalancer(_servers(3))
    sid, _ = lb.acquire_server("turn", prompt_ids=[1, 2, 3])
    again, _ = lb.acquire_server("turn", prompt_ids=[9, 9, 9])  # multi-turn: sticky by request id
    assert again == sid
    plain, _ = lb.acquire_server("no-prompt")
    assert plain in _servers(3)


def test_yaml_constructor_and_bad_slack():
    lb = GroupAffinityLoadBalancer(_servers(2), {"router_class": "x", "slack": 0.0})
    assert lb.get_status()["group_affinity"]["slack"] == 0.0
    with pytest.raises(ValueError, match="slack"):
        GroupAffinityLoadBalancer(_servers(2), {"slack": -1})


def _trainer_config(method, router_config_path=None, route_by_prompt=True):
    spec = {"enable": True, "method": method, "group": {"route_by_prompt": route_by_prompt}}
    if method != "group":
        spec["draft_path"] = "/nonexistent"  # only validated when engines start
    return OmegaConf.create({"actor_rollout_ref": {
        "model": {}, "rollout": {"name": "vllm", "nnodes": 1, "disaggregation": {"enabled": False},
                                 "router_config_path": router_config_path, "custom": {"specrollout": spec}}}})


@pytest.mark.parametrize("method,router,route,expected", [
    ("group", None, True, True),
    ("eagle3+group", None, True, True),
    ("eagle3", None, True, False),
    ("group", "/my/router.yaml", True, False),
    ("group", None, False, False),
])
def test_server_manager_gets_the_router_for_group_methods(method, router, route, expected):
    import verl_specrollout
    from verl.workers.rollout.llm_server import LLMServerManager

    verl_specrollout.register()  # the entry point veRL calls; patches the manager on import
    mgr = LLMServerManager(_trainer_config(method, router, route), worker_group=object())
    assert (mgr._load_balancer_cls is GroupAffinityLoadBalancer) is expected
    # A class the caller passes is kept.
    mine = type("Mine", (), {})
    mgr = LLMServerManager(_trainer_config(method, router, route), worker_group=object(), load_balancer_cls=mine)
    assert mgr._load_balancer_cls is mine


def test_through_verl_router_factory_and_client_on_ray():
    """veRL wraps the class in ray.remote and its client sends the prompt ids the router asks for."""
    ray = pytest.importorskip("ray")
    from verl.workers.rollout.llm_server import LLMServerClient
    from verl.workers.rollout.router import get_router_handle

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        handle = get_router_handle(servers=_servers(4), load_balancer_cls=GroupAffinityLoadBalancer)
        client = LLMServerClient(config=None, load_balancer_handle=handle)

        async def place():
            out = collections.defaultdict(set)
            for g in range(4):
                for p in range(8):
                    sid, _ = await client._acquire_server(f"r{p}-{g}", prompt_ids=[p, 5, 6, 7])
                    out[p].add(sid)
            return out

        placed = asyncio.run(place())
        assert sum(len(s) == 1 for s in placed.values()) >= 6
        assert ray.get(handle.get_status.remote())["group_affinity"]["placed"] == 32
    finally:
        if started:
            ray.shutdown()


def test_module_does_not_route_without_group(monkeypatch):
    cfg = _trainer_config("eagle3").actor_rollout_ref.rollout
    assert not group_router.wants_group_router(cfg)
