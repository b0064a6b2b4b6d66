"""Real veRL 0.9.1 GRPO on CPU with the group router and decoupled speculation on, on veRL's default
V1 trainer and the legacy one (conftest.py's ``grpo_decoupled_run*``: 3 steps, one rollout replica).

One replica has nobody to draft for, so no tail crosses here (two engines exchanging tails through
the named exchange are test_decoupled_ray.py and test_decoupled_vllm.py; the timed two-replica run is
benchmarks/decoupled.py). What this run settles is the wiring inside veRL's own processes: the config
reaches the server and the engine, the engine's verifier link joins veRL's Ray cluster and finds the
job's exchange actor, the server runs its idle drafter between rollouts and stops it when requests
come, the draft versions the learner publishes reach the link without refusals, and every
specrollout/source/* and specrollout/decoupled/* name reaches veRL's logger.
"""

import pytest
from conftest import assert_grpo_ran

pytestmark = pytest.mark.integration

RUNS = {"v1_sync": "grpo_decoupled_run", "legacy": "grpo_decoupled_run_legacy"}


@pytest.mark.parametrize("trainer", list(RUNS))
def test_grpo_with_group_router_and_decoupled_speculation(trainer, request):
    res = request.getfixturevalue(RUNS[trainer])
    steps = assert_grpo_ran(res, 3)
    drafted = [s for s in steps if s.get("specrollout/num_drafts", 0) > 0]
    assert drafted and steps[0] in drafted, steps
    for s in steps:
        assert s["specrollout/draft_reload_failures"] == 0, s
    # The group router ran: its sources are counted, and the EAGLE-3 head drafted through it.
    assert sum(s.get("specrollout/source/model/proposed", 0) for s in steps) > 0, steps
    for s in drafted:
        assert s["specrollout/mean_acceptance_length"] > 1.0, s
        assert "specrollout/source/decoupled/proposed" in s, s
        # The engine's verifier link reached the exchange actor by name, and it kept answering.
        assert s["specrollout/decoupled/links_alive"] == 1.0, s
        assert s.get("specrollout/decoupled/link/exchanges", 0) > 0, s
        assert s.get("specrollout/decoupled/link/exchange_errors", 0) == 0, s
    # The server's idle drafter: reported every step, ran while the replica had no request, and was
    # never on a draft version the exchange refused, while the learner's versions moved on.
    for s in steps:
        assert "specrollout/decoupled/drafter_utilisation" in s, s
        assert 0.0 <= s["specrollout/decoupled/drafter_utilisation"] <= 1.0, s
        assert s.get("specrollout/decoupled/drafter_refused_version", 0) == 0, s
    assert sum(s.get("specrollout/decoupled/drafter_idle_s", 0) for s in steps) > 0, steps
    versions = [s["specrollout/draft_version"] for s in steps]
    assert versions[0] == 0 and versions[-1] > versions[0], versions
