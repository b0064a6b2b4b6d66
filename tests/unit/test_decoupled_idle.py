"""A replica's drafter while its engine is idle (decoupled/engine.py IdleDrafter): it drafts for a
busy verifier between on_idle and on_work, follows the draft version, and reports its utilisation."""

import time

import pytest

from verl_specrollout.config import SpecRolloutConfig
from verl_specrollout.decoupled.engine import IdleDrafter
from verl_specrollout.decoupled.exchange import TailExchange
from verl_specrollout.decoupled.link import ExchangeClient, VerifierLink

PROMPT = [1, 40, 41, 42, 43]


@pytest.fixture(scope="module")
def draft_dir():
    from verl_specrollout.testing.testbed import build_testbed

    return build_testbed("tiny").draft_lm_dir


def _wait(cond, seconds=60.0):
    deadline = time.monotonic() + seconds  # a bound on waiting, not a timing assertion
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.005)
    return cond()


def test_decoupled_idle_replica_drafts_until_work_arrives_and_follows_the_version(draft_dir):
    cfg = SpecRolloutConfig.from_dict({"enable": True, "method": "eagle3+group", "draft_path": "/ckpt",
                                       "decoupled": {"enable": True, "draft_lm_path": draft_dir, "depth": 4,
                                                     "branches": 0}})
    ex = TailExchange()
    link = VerifierLink("busy", ExchangeClient(ex), interval_s=0.001)
    idle = IdleDrafter(cfg, "idle-replica", client=ExchangeClient(ex))
    try:
        link.open("r", PROMPT)
        idle.on_idle()
        assert _wait(lambda: link.take("r", [], 4) is not None)
        assert idle.stats()["drafter/running"] == 1 and idle.stats()["drafter/utilisation"] > 0
        idle.on_work()
        first = idle.stats()
        assert first["drafter/running"] == 0
        assert 0 < first["drafter/busy_s"] <= first["drafter/idle_s"]
        time.sleep(0.05)
        assert idle.stats()["drafter/idle_s"] == first["drafter/idle_s"]  # a working replica is not idle
        assert ex.status()["drafters"] == {}  # detached: the exchange serves nobody with it

        link.set_version(3)          # the busy replica reloaded its draft
        idle.set_version(3)          # so did this one
        idle.on_idle()
        link.commit("r", [30])
        assert _wait(lambda: link.take("r", [30], 4) is not None)
        assert all(t.version == 3 for t in link.board.tails_of("r"))
        idle.on_work()
        # The reload replaced the drafter; its seconds drafting before the reload are not lost.
        assert idle.stats()["drafter/busy_s"] > first["drafter/busy_s"]

        # The engine sleeps: the drafter's KV caches go and its weights sit in host memory...
        assert idle._lm._cache
        idle.release()
        assert not idle._lm._cache and idle._lm.offloaded
        assert all(p.device.type == "cpu" for p in idle._lm.model.parameters())
        # ...until the replica is idle again: back on its device, drafting from scratch.
        link.commit("r", [30, 31])
        idle.on_idle()
        assert not idle._lm.offloaded
        assert _wait(lambda: link.take("r", [30, 31], 4) is not None)
    finally:
        idle.on_work()
        link.stop()


def test_decoupled_idle_drafter_is_inert_when_off():
    cfg = SpecRolloutConfig.from_dict({"enable": True, "method": "eagle3+group", "draft_path": "/ckpt"})
    idle = IdleDrafter(cfg, "r")
    idle.on_idle()
    assert idle.stats()["drafter/running"] == 0
