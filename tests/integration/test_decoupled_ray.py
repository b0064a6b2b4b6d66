"""Decoupled speculation across processes: the job's exchange as a named Ray actor, a drafter in its
own Ray actor (as on an idle replica), the verifier link in this process; then the exchange dies."""

import logging
import time

import pytest

from verl_specrollout.testing.testbed.measure import hf_greedy

pytestmark = pytest.mark.integration

PROMPT = [1, 40, 41, 42, 43]


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="decoupled_test")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def draft_dir():
    from verl_specrollout.testing.testbed import build_testbed

    return build_testbed("tiny").draft_lm_dir


def test_decoupled_tails_cross_processes_through_the_named_exchange_and_a_dead_exchange_falls_back(
        ray_local, draft_dir, caplog):
    ray = ray_local
    from verl_specrollout.decoupled.exchange import exchange_name, ray_exchange
    from verl_specrollout.decoupled.link import ExchangeClient, VerifierLink

    handle = ray_exchange("job1", namespace="decoupled_test")
    assert ray_exchange("job1", namespace="decoupled_test")._actor_id == handle._actor_id  # one per job

    @ray.remote(num_cpus=0)
    class IdleReplicaDrafter:
        def __init__(self, path, job):
            from verl_specrollout.decoupled.drafter import Drafter, DraftLM
            from verl_specrollout.decoupled.link import ExchangeClient

            ex = ray.get_actor(exchange_name(job), namespace="decoupled_test")
            self.d = Drafter("replica-1", ExchangeClient(ex), DraftLM(path), version=0, depth=5, branches=0)

        def run_once(self):
            return self.d.run_once()

    drafter = IdleReplicaDrafter.remote(draft_dir, "job1")
    link = VerifierLink("replica-0", ExchangeClient(handle, timeout_s=5.0), interval_s=0.002)
    try:
        link.open("r", PROMPT)
        link.commit("r", [30])
        got, deadline = None, time.monotonic() + 60  # a bound on waiting, not a timing assertion
        while got is None and time.monotonic() < deadline:
            ray.get(drafter.run_once.remote())
            time.sleep(0.01)
            got = link.take("r", [30], 5)
        assert got is not None and got.tokens == hf_greedy(draft_dir, PROMPT + [30], 5)

        ray.kill(handle)  # the exchange dies: the verifier's step is unaffected, the link goes down
        with caplog.at_level(logging.WARNING):
            deadline = time.monotonic() + 60
            while link.alive and time.monotonic() < deadline:
                time.sleep(0.05)
        assert not link.alive and link.counters["exchange_errors"] >= 1
        assert sum("decoupled drafting unavailable" in r.message for r in caplog.records) == 1
        link.commit("r", [30, 1, 2])
        assert link.take("r", [30, 1, 2], 5) is None  # nothing new arrives: coupled drafting
    finally:
        link.stop()
