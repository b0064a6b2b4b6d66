"""Decoupled speculation in veRL's rollout server (verl_adapter/server.py, verl_adapter/decoupled_hooks.py)
and in the trainer's metrics: the idle drafter stops before a request reaches the engine, starts
when the last one finished, never runs while the engine sleeps, drafts with the version each reload
made live (and the workers hear it too); the metrics carry the decoupled source and the drafter's
utilisation. No engine, no Ray: the server is built the way tests/integration/test_sleep_wake_draft.py
builds one, with fakes for the engine and the IdleDrafter."""

from __future__ import annotations

import asyncio
import threading

import pytest

from verl_specrollout import compat, metrics as M
from verl_specrollout.rollout_stats import RolloutStepStats
from verl_specrollout.verl_adapter.decoupled_hooks import DecoupledHooks


class FakeDrafter:
    """IdleDrafter's four calls, recorded; `running` as IdleDrafter's thread would be."""

    def __init__(self):
        self.calls, self.running, self.version = [], False, 0
        self.threads = set()
        self.counts = {"tails": 0}

    def on_idle(self):
        self.threads.add(threading.current_thread().name)
        self.calls.append("on_idle")
        self.running = True

    def on_work(self):
        self.calls.append("on_work")
        self.running = False

    def release(self):
        self.calls.append("release")
        self.running = False

    def set_version(self, v):
        self.calls.append(("set_version", v))
        self.version = v

    def stats(self):
        # Cumulative seconds as IdleDrafter.stats gives them; its own ratio is over its whole life.
        return {"drafter/utilisation": 0.9, "drafter/running": int(self.running),
                **{f"drafter/{k}": v for k, v in self.counts.items()}}


class FakeEngine:
    def __init__(self):
        self.calls = []

    async def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        self.calls.append(("rpc", method, tuple(args)))
        return [{}] if method == compat.WORKER_GROUP_STATS_METHOD else [True]

    async def sleep(self, level=1, **kw):
        self.calls.append(("sleep", level))

    async def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags or ())))

    async def reset_prefix_cache(self, **kw):
        pass

    async def reset_encoder_cache(self):
        pass


class FakeReloader:
    publish_dir = "/published"
    failures = 0

    def __init__(self):
        self.current_draft_version = 0

    async def amaybe_reload(self):
        self.current_draft_version = 3
        return 3

    async def arestore(self):  # after a sleep that discarded the draft: the same version back
        return self.current_draft_version

    async def akeep(self, live=True):
        return {}


SPEC = {"enable": True, "method": "draft_model+group", "draft_path": "/draft",
        "decoupled": {"enable": True}}


def _server(spec=SPEC):
    from omegaconf import OmegaConf
    from verl.workers.rollout.replica import RolloutMode

    from verl_specrollout.verl_adapter.server import SpecRolloutHttpServer

    server = SpecRolloutHttpServer.__new__(SpecRolloutHttpServer)  # no Ray actor, no HTTP front end
    server.config = OmegaConf.create({"enable_sleep_mode": True, "free_cache_engine": True, "mtp": None,
                                      "custom": {"specrollout": spec}})
    server.engine = FakeEngine()
    server.node_rank, server.replica_rank, server.global_steps = 0, 0, 0
    server.rollout_mode = RolloutMode.HYBRID
    server.model_config = OmegaConf.create({"lora_rank": 0, "lora": {}})
    server.init_specrollout()
    if server.decoupled is not None:
        server.decoupled.drafter = FakeDrafter()
    server.draft._reloader = FakeReloader()
    return server


def _fake_generate(server, gate: dict):
    """The request's own path (restore, veRL's generate): records whether the drafter ran meanwhile."""
    async def generate(prompt_ids, sampling_params, request_id, *a, **kw):
        gate.setdefault("drafter_running_in_engine", []).append(server.decoupled.drafter.running)
        await gate[request_id].wait()
        return request_id
    server._generate = generate


def _gated(server, *ids: str) -> dict:
    """Requests `ids` held in the engine until their gate is set."""
    gate = {i: asyncio.Event() for i in ids}
    _fake_generate(server, gate)
    return gate


def test_decoupled_server_builds_an_idle_drafter_only_when_on():
    server = _server()
    from verl_specrollout.decoupled.engine import IdleDrafter

    assert isinstance(server._make_idle_drafter(), IdleDrafter)
    assert server.draft.on_version is not None
    off = _server({"enable": True, "method": "draft_model+group", "draft_path": "/draft"})
    assert off.decoupled is None and off.draft.on_version is None


def test_decoupled_on_work_before_a_request_and_on_idle_after_the_last():
    server = _server()
    drafter = server.decoupled.drafter

    async def run():
        gate = {"a": asyncio.Event(), "b": asyncio.Event()}
        _fake_generate(server, gate)
        await server.decoupled.wake()  # idle and awake: drafting
        assert drafter.calls == ["on_idle"] and drafter.running
        ta = asyncio.create_task(server.generate([1], {}, "a"))
        tb = asyncio.create_task(server.generate([2], {}, "b"))
        await asyncio.sleep(0.05)
        assert drafter.calls == ["on_idle", "on_work"]  # one stop for both, before either reached the engine
        assert gate["drafter_running_in_engine"] == [False, False]
        assert server.decoupled.inflight == 2
        gate["a"].set()
        assert await ta == "a"
        assert drafter.calls == ["on_idle", "on_work"]  # b still in flight
        gate["b"].set()
        assert await tb == "b"
        assert drafter.calls == ["on_idle", "on_work", "on_idle"] and server.decoupled.inflight == 0
        assert len(drafter.threads) == 1 and threading.current_thread().name not in drafter.threads  # off the loop

    asyncio.run(run())


def test_decoupled_request_failure_still_counts_out():
    server = _server()
    drafter = server.decoupled.drafter

    async def boom(*a, **kw):
        raise RuntimeError("engine died")

    server._generate = boom

    async def run():
        with pytest.raises(RuntimeError):
            await server.generate([1], {}, "x")
        assert server.decoupled.inflight == 0 and drafter.calls == ["on_work", "on_idle"]

    asyncio.run(run())


def test_decoupled_request_cancelled_while_the_drafter_stops_counts_out():
    server = _server()
    drafter = server.decoupled.drafter
    release = threading.Event()
    drafter.on_work = lambda: (release.wait(5), drafter.calls.append("on_work"))  # a slow stop

    async def never(*a, **kw):
        raise AssertionError("reached the engine before the drafter stopped")

    server._generate = never

    async def run():
        t = asyncio.create_task(server.generate([1], {}, "x"))
        await asyncio.sleep(0.05)
        t.cancel()
        await asyncio.sleep(0.01)
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert server.decoupled.inflight == 0 and drafter.calls == ["on_work", "on_idle"]

    asyncio.run(run())


def test_decoupled_drafter_never_starts_while_asleep():
    server = _server()
    drafter = server.decoupled.drafter

    async def run():
        gate = _gated(server, "a")
        await server.decoupled.wake()
        await server.sleep()
        # Stopped, and its accelerator memory released before the engine sleeps.
        assert not drafter.running and drafter.calls[-1] == "release"
        assert ("sleep", 2) in server.engine.calls
        # A request finishing while asleep (a drain) does not start it.
        t = asyncio.create_task(server.generate([1], {}, "a"))
        await asyncio.sleep(0.02)
        gate["a"].set()
        await t
        assert not drafter.running and "on_idle" not in drafter.calls[1:]
        # Weights only back (veRL's weight-sync wake): still asleep.
        await server.wake_up(tags=["weights"])
        assert not drafter.running
        await server.wake_up(tags=["kv_cache"])
        assert drafter.running and drafter.calls[-1] == "on_idle"
        # The weight sync's release / resume pair.
        await server.release_kv_cache()
        assert not drafter.running
        await server.resume_kv_cache()
        assert drafter.running

    asyncio.run(run())


def test_decoupled_wake_with_requests_in_flight_does_not_start():
    server = _server()
    drafter = server.decoupled.drafter

    async def run():
        gate = _gated(server, "a")
        await server.sleep()
        t = asyncio.create_task(server.generate([1], {}, "a"))
        await asyncio.sleep(0.02)
        await server.wake_up()
        assert not drafter.running
        gate["a"].set()
        await t
        assert drafter.running

    asyncio.run(run())


def test_decoupled_version_after_reload_reaches_drafter_and_workers():
    server = _server()
    drafter = server.decoupled.drafter

    async def run():
        await server.set_global_steps(7)
        assert ("set_version", 3) in drafter.calls
        assert ("rpc", compat.WORKER_DECOUPLED_VERSION_METHOD, (3,)) in server.engine.calls
        n = len(drafter.calls)
        await server.set_global_steps(8)  # nothing newer: no version change, nothing passed on
        assert len(drafter.calls) == n

    asyncio.run(run())


def test_decoupled_worker_extension_method_calls_decoupled_set_version(monkeypatch):
    from verl_specrollout.verl_adapter import worker_extension as W

    seen = []
    monkeypatch.setattr(W, "decoupled_set_version", lambda worker, v: seen.append((worker, v)) or True)
    ext = W.SpecRolloutWorkerExtension.__new__(W.SpecRolloutWorkerExtension)
    assert getattr(ext, compat.WORKER_DECOUPLED_VERSION_METHOD)(5) is True
    assert seen == [(ext, 5)]


def test_decoupled_step_stats_reach_the_rollout_step_record():
    server = _server()
    drafter = server.decoupled.drafter

    async def run():
        drafter.counts.update(tails=10, busy_s=1.0, idle_s=4.0)
        first = RolloutStepStats.from_dict(await server.specrollout_step_metrics())
        drafter.counts.update(tails=14, busy_s=1.5, idle_s=8.0)
        second = RolloutStepStats.from_dict(await server.specrollout_step_metrics())
        return first, second

    first, second = asyncio.run(run())
    assert first.decoupled["drafter/utilisation"] == 0.25 and first.decoupled["drafter/tails"] == 10
    assert second.decoupled["drafter/tails"] == 4  # a delta per step
    # Utilisation over the step, not the drafter's life (0.9) nor since the start (1.5 / 8).
    assert second.decoupled["drafter/utilisation"] == pytest.approx(0.5 / 4.0)
    assert second.decoupled["drafter/idle_s"] == 4.0


def test_decoupled_hooks_drafter_failure_never_reaches_a_request():
    class Broken(FakeDrafter):
        def on_work(self):
            raise RuntimeError("stuck")

    hooks = DecoupledHooks(Broken())

    async def run():
        await hooks.request_begins()
        await hooks.request_ends()
        return hooks.inflight

    assert asyncio.run(run()) == 0


def test_decoupled_metrics_flatten_source_and_utilisation():
    assert "decoupled" in M.GROUP_SOURCES
    a = RolloutStepStats(group={"sources": {"decoupled": {"proposed": 8, "accepted": 5, "chosen": 2},
                                            "model": {"proposed": 4, "accepted": 1, "chosen": 2}},
                                "request_steps": 8, "no_draft": 0},
                         decoupled={"drafter/utilisation": 0.5, "drafter/running": 1, "drafter/tails": 6,
                                    "drafter/refused_version": 1, "drafter/busy_s": 1.0, "drafter/idle_s": 2.0})
    b = RolloutStepStats(decoupled={"drafter/utilisation": 0.1, "drafter/running": 0, "drafter/tails": 2,
                                    "drafter/busy_s": 0.2, "drafter/idle_s": 2.0})
    out = M.step_metrics([a.to_dict(), b])
    assert out["specrollout/source/decoupled/proposed"] == 8.0
    assert out["specrollout/source/decoupled/accepted"] == 5.0
    assert out["specrollout/source/decoupled/share"] == 0.25
    # Seconds summed over drafters first: (1.0 + 0.2) / (2.0 + 2.0).
    assert out["specrollout/decoupled/drafter_utilisation"] == pytest.approx(0.3)
    assert out["specrollout/decoupled/drafter_idle_s"] == 4.0
    assert out["specrollout/decoupled/drafter_running"] == 1.0
    assert out["specrollout/decoupled/drafter_tails"] == 8.0
    assert out["specrollout/decoupled/drafter_refused_version"] == 1.0
    # A drafter idle for a moment weighs by its seconds, not as one of two equal ratios.
    c = RolloutStepStats(decoupled={"drafter/busy_s": 0.0, "drafter/idle_s": 0.1})
    d = RolloutStepStats(decoupled={"drafter/busy_s": 9.0, "drafter/idle_s": 10.0})
    assert M.step_metrics([c, d])["specrollout/decoupled/drafter_utilisation"] == pytest.approx(9.0 / 10.1)
    # Off: no decoupled names at all (besides the group source, present whenever group counts are).
    assert not any(k.startswith("specrollout/decoupled/") for k in M.step_metrics([RolloutStepStats()]))


def test_decoupled_verifier_link_counts_are_logged():
    g = {"sources": {}, "request_steps": 4, "no_draft": 0,
         "decoupled": {"link/exchange_errors": 1, "board/miss_empty": 3, "alive": 1}}
    out = M.step_metrics([RolloutStepStats(group=g), RolloutStepStats(group=dict(g))])
    assert out["specrollout/decoupled/link/exchange_errors"] == 2.0
    assert out["specrollout/decoupled/board/miss_empty"] == 6.0
    assert out["specrollout/decoupled/links_alive"] == 2.0


def test_decoupled_stats_survive_the_wire():
    s = RolloutStepStats(decoupled={"drafter/utilisation": 0.5, "drafter/tails": 3})
    assert RolloutStepStats.from_dict(s.to_dict()).decoupled == {"drafter/utilisation": 0.5, "drafter/tails": 3.0}
    assert RolloutStepStats.from_dict(RolloutStepStats().to_dict()).decoupled == {}


def test_decoupled_link_counts_are_per_step_deltas_and_alive_a_level():
    from verl_specrollout.config import SpecRolloutConfig
    from verl_specrollout.verl_adapter.rollout_metrics import RolloutMetrics

    answers = [{"sources": {}, "decoupled": {"alive": 1, "board/miss_empty": 5}},
               {"sources": {}, "decoupled": {"alive": 1, "board/miss_empty": 8}}]

    class Engine:
        async def collective_rpc(self, method, args=()):
            return [answers.pop(0)]

    rm = RolloutMetrics(SpecRolloutConfig.from_dict(SPEC))

    async def run():
        return await rm._group(Engine()), await rm._group(Engine())

    first, second = asyncio.run(run())
    assert first["decoupled"] == {"alive": 1, "board/miss_empty": 5}
    assert second["decoupled"] == {"alive": 1, "board/miss_empty": 3}


def test_decoupled_engine_idle_closes_the_links_requests_before_the_drafter_starts():
    server = _server()
    drafter = server.decoupled.drafter

    async def run():
        gate = _gated(server, "a")
        t = asyncio.create_task(server.generate([1], {}, "a"))
        await asyncio.sleep(0.02)
        assert ("rpc", compat.WORKER_DECOUPLED_IDLE_METHOD, ()) not in server.engine.calls
        gate["a"].set()
        await t

    asyncio.run(run())
    rpc = ("rpc", compat.WORKER_DECOUPLED_IDLE_METHOD, ())
    assert rpc in server.engine.calls and drafter.calls[-1] == "on_idle"


def test_decoupled_worker_extension_engine_idle_closes_every_request_on_the_link():
    from verl_specrollout.decoupled.exchange import TailExchange
    from verl_specrollout.decoupled.link import ExchangeClient, VerifierLink
    from verl_specrollout.verl_adapter import worker_extension as W
    from verl_specrollout.vllm_adapter import group_proposer as gp

    class Runner:
        pass

    ex = TailExchange()
    link = VerifierLink("v", ExchangeClient(ex), start=False)
    drafter = gp.GroupDrafter.__new__(gp.GroupDrafter)
    drafter.decoupled, drafter._outputs = link, {"a": [1], "b": [2, 3]}
    for r in ("a", "b"):
        link.open(r, [5, 6])
    runner = Runner()
    runner.__dict__[gp.STATE_ATTR] = drafter
    ext = W.SpecRolloutWorkerExtension.__new__(W.SpecRolloutWorkerExtension)
    ext.__dict__[compat.VLLM_WORKER_MODEL_RUNNER] = runner
    assert getattr(ext, compat.WORKER_DECOUPLED_IDLE_METHOD)() == 2
    assert len(link.board) == 0
    link.pump()
    assert ex.status()["verifiers"]["v"]["requests"] == 0  # the exchange no longer offers them to drafters
