"""Pure planner tests on synthetic cost and acceptance curves (no vLLM engine, no torch)."""

from __future__ import annotations

import itertools
import random

import pytest

from verl_specrollout.planner.acceptance import AcceptanceEstimator, PerRequestAcceptance, expected_tokens
from verl_specrollout.planner.cost_model import StepCostModel
from verl_specrollout.planner import KTable, Planner, allocate_verification_budget, choose_k

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def knee_cost(a=5e-3, b=2e-5, knot=256, e=2e-4, c=5e-6, d0=1.7e-3, d1=1e-5):
    """Memory-bound below `knot` tokens, compute-bound above (the regime in integration-map.md)."""

    def t(tokens, requests, passes):
        return a + b * tokens + c * requests + e * max(0, tokens - knot) + passes * (d0 + d1 * requests)

    return t


def compute_bound_cost(a=1e-3, b=4e-4, d0=1e-3, d1=4e-5):
    """Every verified token costs the same (no knee): speculation only pays with high acceptance."""

    def t(tokens, requests, passes):
        return a + b * tokens + passes * (d0 + d1 * requests)

    return t


def timed_steps(truth, max_k=4, noise=0.03, outliers=0.0, seed=0, zero_k_passes=1, reps=6):
    """(batch size, K, passes, seconds) of `reps` steps at every BATCHES x K cell."""
    rnd = random.Random(seed)
    for _ in range(reps):
        for bsz, k in itertools.product(BATCHES, range(max_k + 1)):
            passes = max(k, zero_k_passes) if k else zero_k_passes
            t = truth(bsz * (1 + k), bsz, passes) * (1 + noise * rnd.gauss(0, 1))
            if rnd.random() < outliers:
                t *= rnd.uniform(5, 20)
            yield bsz, k, passes, t


def fitted(truth, max_k=4, noise=0.03, outliers=0.0, seed=0, zero_k_passes=1, reps=6):
    cm = StepCostModel()
    for bsz, k, passes, t in timed_steps(truth, max_k, noise, outliers, seed, zero_k_passes, reps):
        cm.observe(bsz * (1 + k), bsz, passes, t)
    assert cm.fit()
    return cm


def planner_with(truth, alpha, max_k=4, max_batch=256, zero_k_passes=1, **kw):
    """A planner that has timed every K at every BATCHES size (its cost model fitted) and seen
    drafts at `alpha` (geometric acceptance)."""
    p = Planner(max_k=max_k, max_batch=max_batch, zero_k_passes=zero_k_passes, **kw)
    for bsz, k, _, t in timed_steps(truth, max_k, zero_k_passes=zero_k_passes, reps=p.estimates.min_probe_steps):
        p.observe_time(bsz, bsz * (1 + k), k, t)
    assert p.cost.fit()
    for _ in range(200):
        p.observe_drafts([(max_k, _accepted(alpha, max_k, random.Random(_ * 7 + i))) for i in range(8)])
    return p


def _accepted(alpha, k, rnd):
    a = 0
    while a < k and rnd.random() < alpha:
        a += 1
    return a


# --------------------------------------------------------------------- choices
def test_k0_when_compute_bound_and_acceptance_low():
    p = planner_with(compute_bound_cost(), alpha=0.15, zero_k_passes=0)
    dense = p.plan()
    assert set(dense[1:]) == {0}, dense.rows()


def test_k0_at_high_batch_even_with_decent_acceptance_past_the_knee():
    p = planner_with(knee_cost(), alpha=0.6)
    dense = p.plan()
    assert dense[256] == 0
    assert dense[1] >= 2


def test_k_grows_as_batch_falls():
    truth = knee_cost()
    p = planner_with(truth, alpha=0.8)
    dense = p.plan()
    ks = [dense[b] for b in BATCHES]
    e = p.acceptance.expected_table()

    def true_tp(bsz, k):
        return bsz * e[k] / truth(bsz * (1 + k), bsz, max(k, 1))

    # Non-increasing in B, except where the two K are a near-tie in truth (< 1 %): measured
    # noise may pick either, and either is right.
    for b_hi, x, y in zip(BATCHES[1:], ks, ks[1:]):
        assert x >= y or abs(true_tp(b_hi, x) / true_tp(b_hi, y) - 1) < 0.01, (b_hi, ks)
    assert ks[0] >= 3 and ks[-1] <= 1, ks


def test_choose_k_matches_brute_force_on_truth():
    truth = knee_cost()
    p = planner_with(truth, alpha=0.7)
    e = p.acceptance.expected_table()
    for bsz in BATCHES:
        k, _ = choose_k(bsz, e, p.cost, 4, zero_k_passes=1)
        true_tp = [bsz * e[j] / truth(bsz * (1 + j), bsz, max(j, 1)) for j in range(5)]
        # the fitted model's choice is within 3 % of the true optimum's throughput
        assert true_tp[k] >= 0.97 * max(true_tp), (bsz, k, true_tp)


def test_hysteresis_keeps_current_k_on_near_ties():
    p = planner_with(knee_cost(), alpha=0.7)
    e = p.acceptance.expected_table()
    k_best, tps = choose_k(8, e, p.cost, 4, 1)
    runner_up = max((k for k in range(5) if k != k_best), key=lambda k: tps[k])
    if tps[k_best] <= tps[runner_up] * 1.03:
        k, _ = choose_k(8, e, p.cost, 4, 1, current=runner_up, hysteresis=0.03)
        assert k == runner_up
    k, _ = choose_k(8, e, p.cost, 4, 1, current=k_best, hysteresis=0.03)
    assert k == k_best


# ------------------------------------------------------------ closed-loop sims
def simulate(p, truth, alpha_fn, batch_fn, steps, seed=0):
    """Drive the planner like the scheduler does: K drafted at step s is verified at s+1."""
    rnd = random.Random(seed)
    prev = None
    ks = []
    now = [0.0]
    p.replan_budget.clock = lambda: now[0]  # simulated time: re-plans themselves take none
    for s in range(steps):
        bsz = batch_fn(s)
        k = p.k_for(bsz)
        kv = prev if prev is not None else k
        t = truth(bsz * (1 + kv), bsz, p.passes_for(k)) * (1 + 0.03 * rnd.gauss(0, 1))
        now[0] += t
        p.observe_step(bsz, bsz * (1 + kv), k, t)
        if kv:
            p.observe_drafts([(kv, _accepted(alpha_fn(s), kv, rnd)) for _ in range(bsz)])
        prev = k
        ks.append(k)
        p.tick()
    return ks


def test_cold_start_explores_then_plans():
    p = Planner(max_k=4, max_batch=64, replan_interval=8, zero_k_passes=1)
    ks = simulate(p, knee_cost(), lambda s: 0.8, lambda s: (1, 4, 16, 64)[(s // 3) % 4], 200)
    assert set(ks[:40]) >= {0, 1, 4}  # exploration visited several K
    assert p.cost.fitted
    dense = p.plan()
    assert dense[1] >= 2 and dense[64] <= dense[1]
    truth, e = knee_cost(), p.acceptance.expected_table()
    for bsz in (1, 4, 16, 64):  # within 3 % of the true optimum where it was run
        tp = [bsz * e[k] / truth(bsz * (1 + k), bsz, max(k, 1)) for k in range(5)]
        assert tp[dense[bsz]] >= 0.97 * max(tp), (bsz, dense[bsz], tp)


def test_reacts_to_acceptance_drop_within_bounded_steps():
    drop_at = 300
    p = Planner(max_k=4, max_batch=16, replan_interval=16, zero_k_passes=1, acceptance_decay=0.98, explore_every=0)
    ks = simulate(p, knee_cost(), lambda s: 0.9 if s < drop_at else 0.02, lambda s: 4, drop_at + 200)
    assert ks[drop_at - 1] >= 3
    after = ks[drop_at:]
    switched = next(i for i, k in enumerate(after) if k <= 1)
    assert switched <= 120, switched  # decay 0.98 + one re-plan interval
    assert all(k <= 1 for k in after[switched + 16 :])


def test_replans_are_postponed_when_they_cost_more_than_the_budget():
    p = Planner(max_k=4, max_batch=16, replan_interval=4, zero_k_passes=1, overhead_budget=0.05)
    now = [0.0]
    p.replan_budget.clock = lambda: now[0]
    p.cost = fitted(knee_cost(), 4)
    real_replan = p.replan

    def slow_replan():  # every re-plan takes 0.1 s of (simulated) engine time
        now[0] += 0.1
        return real_replan()

    p.replan = slow_replan
    for _ in range(400):
        now[0] += 0.01  # 10 ms steps: a re-plan every 4 steps would be 0.1 s per 0.04 s
        p.tick()
    # A 0.1 s re-plan may run once per 2 s of engine time: 4 s -> about 2-3 re-plans, not 100.
    assert 1 <= p.replans <= 4, p.replans
    assert p.replan_budget.skipped >= 90


def test_from_config_takes_the_typed_planner_settings():
    from verl_specrollout.config import SpecRolloutConfig

    cfg = SpecRolloutConfig.from_dict({"method": "eagle3", "draft_path": "/d", "max_k": 3, "planner": {
        "mode": "static", "table": [[1, 8, 3], [9, 64, 1]], "replan_interval": 6, "hysteresis": 0.1,
        "explore_every": 2, "acceptance_decay": 0.9, "prior_acceptance": 0.3, "max_batch": 64}})
    p = Planner.from_config(cfg)
    assert p.settings is cfg.planner and p.max_k == 3 and p.max_batch == 64
    assert p.rows() == [[1, 8, 3], [9, 64, 1]] and (p.replan_interval, p.hysteresis, p.explore_every) == (6, 0.1, 2)
    assert p.acceptance.decay == 0.9 and p.zero_k_passes == 0  # skip_draft_at_k0 (default on): a K=0 step drafts nothing
    assert Planner.from_config(cfg, max_batch=16).rows() == [[1, 8, 3], [9, 16, 1]]  # the engine's max_num_seqs wins
    with pytest.raises(TypeError, match="not both"):
        Planner(max_k=3, settings=cfg.planner, hysteresis=0.2)
    with pytest.raises(ValueError, match="replan_intervl"):  # the config's own check names the bad key
        Planner(max_k=3, replan_intervl=4)


def test_off_and_static_modes():
    off = Planner(max_k=4, max_batch=32, mode="off")
    assert off.lookup() == [0] * 33 and off.rows() == [[1, 32, 0]]
    static = Planner(max_k=4, max_batch=32, mode="static")
    assert static.rows() == [[1, 32, 4]]
    pinned = Planner(max_k=4, max_batch=32, mode="static", table=[[1, 4, 4], [5, 16, 2], [17, 32, 0]])
    assert pinned.rows() == [[1, 4, 4], [5, 16, 2], [17, 32, 0]]
    for p in (off, static, pinned):
        for _ in range(100):
            assert p.tick() is None  # never re-plans
    pinned.set_mode("off")
    assert pinned.rows() == [[1, 32, 0]]


# ----------------------------------------------------------------- cost model
@pytest.mark.parametrize("outliers", [0.0, 0.1, 0.2])
def test_cost_fit_robust_to_outliers(outliers):
    truth = knee_cost()
    cm = fitted(truth, outliers=outliers, noise=0.05, seed=1)
    for bsz, k in itertools.product(BATCHES, range(5)):
        passes = max(k, 1)
        want = truth(bsz * (1 + k), bsz, passes)
        got = cm.predict(bsz * (1 + k), bsz, passes)
        assert abs(got - want) / want < 0.1, (bsz, k, got, want, cm.describe())
    assert abs(cm.coef[4] - 1.7e-3) / 1.7e-3 < 0.25  # draft pass cost identified


def test_cost_model_needs_data_and_ignores_garbage():
    cm = StepCostModel()
    assert not cm.fit()
    cm.observe(0, 1, 0, 0.01)
    cm.observe(10, 0, 0, 0.01)
    cm.observe(10, 1, 0, float("nan"))
    cm.observe(10, 1, 0, -1.0)
    assert len(cm) == 0


# ----------------------------------------------------------------- acceptance
def test_expected_tokens_formula():
    assert expected_tokens([0.5, 0.5], 0) == 1.0
    assert expected_tokens([0.5, 0.5], 2) == pytest.approx(1 + 0.5 + 0.25)
    assert expected_tokens([1.0] * 4, 4) == 5.0


def test_prior_washes_out_and_per_position_estimates():
    est = AcceptanceEstimator(3, decay=0.99, prior=0.6)
    assert est.alphas() == pytest.approx([0.6, 0.6, 0.6])
    rnd = random.Random(0)
    true = [0.9, 0.5, 0.2]
    for _ in range(300):
        pairs = []
        for _ in range(8):
            a = 0
            while a < 3 and rnd.random() < true[a]:
                a += 1
            pairs.append((3, a))
        est.observe_requests(pairs)
    assert est.alphas() == pytest.approx(true, abs=0.05)


def test_step_counts_equal_per_request_when_lengths_equal():
    rnd = random.Random(3)
    a1, a2 = AcceptanceEstimator(4), AcceptanceEstimator(4)
    for _ in range(50):
        pairs = [(4, rnd.randint(0, 4)) for _ in range(6)]
        a1.observe_requests(pairs)
        a2.observe_step_counts(
            len(pairs),
            [sum(1 for n, _ in pairs if n > i) for i in range(4)],
            [sum(1 for _, a in pairs if a > i) for i in range(4)],
        )
    assert a1.alphas() == pytest.approx(a2.alphas())


def test_per_request_acceptance():
    pr = PerRequestAcceptance(decay=0.9, prior=0.5)
    for _ in range(20):
        pr.observe("good", 4, 4)
        pr.observe("bad", 4, 0)
    assert pr.rate("good") > 0.9 and pr.rate("bad") < 0.1 and pr.rate("new") == 0.5
    pr.forget("good")
    assert pr.rate("good") == 0.5


# ---------------------------------------------------------- verification budget
def test_budget_allocation_is_optimal_and_shortens_failing_requests():
    rates = [0.9, 0.2, 0.6, 0.05]
    lens = [4, 4, 4, 4]
    alloc = allocate_verification_budget(8, rates, lens)
    assert sum(alloc) == 8
    assert alloc[0] >= alloc[2] >= alloc[1] >= alloc[3]

    def value(al):
        return sum(sum(r ** j for j in range(1, k + 1)) for r, k in zip(rates, al))

    best = max(
        (al for al in itertools.product(range(5), repeat=4) if sum(al) <= 8),
        key=value,
    )
    assert value(alloc) == pytest.approx(value(best))
    # the gain threshold trims low-value tokens even with budget to spare
    alloc = allocate_verification_budget(100, rates, lens, min_gain=0.3)
    assert alloc[3] == 0 and alloc[1] == 0 and alloc[0] == 4
    assert allocate_verification_budget(0, rates, lens) == [0, 0, 0, 0]


# ------------------------------------------------------------------ table format
def test_rows_dense_roundtrip():
    dense = [0, 4, 4, 3, 3, 3, 0, 0, 1]
    table = KTable.of(dense)
    rows = table.rows()
    assert rows == [[1, 2, 4], [3, 5, 3], [6, 7, 0], [8, 8, 1]]
    assert KTable.from_rows(rows, 8, 4) == table and table.lookup() == dense
    assert table.lookup(10) == dense + [1, 1]
    assert table.lookup(3) == dense[:4]
    assert table.k_for(1000) == 1 and table.k_for(0) == 4  # vLLM's tail; batch sizes start at 1
    assert KTable.from_rows([[1, 2, 9], [5, 8, 1]], 8, 4).lookup() == [0, 4, 4, 4, 4, 1, 1, 1, 1]  # cap, gap
    with pytest.raises(ValueError, match="batch size 1"):
        KTable.from_rows([[2, 8, 1]], 8, 4)
    with pytest.raises(ValueError, match="K must be >= 0"):
        KTable.of([0, 1, -1])


def _vllm_dynamic_utils():
    """vLLM's own pure validation module, loaded by path: importing it through the `vllm`
    package would pull in torch and the whole engine (~30 s on this machine)."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vllm not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], "v1", "spec_decode", "dynamic", "utils.py")
    if not os.path.isfile(path):
        pytest.skip("this vLLM has no dynamic speculative decoding (vllm/v1/spec_decode/dynamic/utils.py)")
    mod_spec = importlib.util.spec_from_file_location("_vllm_dynamic_sd_utils", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def test_emitted_tables_pass_vllm_validation():
    utils = _vllm_dynamic_utils()
    for alpha, truth in ((0.8, knee_cost()), (0.6, knee_cost()), (0.15, compute_bound_cost())):
        p = planner_with(truth, alpha=alpha, max_batch=256)
        for mode in ("adaptive", "off", "static"):
            if mode == "adaptive":
                p._install(p.plan())
            else:
                p.set_mode(mode)
            rows = p.rows()
            parsed = utils.validate_and_normalize_dynamic_sd_schedule(rows)
            assert [list(r) for r in parsed] == rows
            assert utils.build_dynamic_sd_schedule_lookup(rows, 256, 4) == p.lookup()
            # vLLM pads/truncates to its own max_num_seqs the same way we do
            assert utils.build_dynamic_sd_schedule_lookup(rows, 512, 4) == p.lookup(512)
            assert utils.build_dynamic_sd_schedule_lookup(rows, 16, 4) == p.lookup(16)
    # K=0 rows are legal in vLLM's validation
    utils.validate_and_normalize_dynamic_sd_schedule([[1, 4, 3], [5, 1024, 0]])


def test_metrics_flatten():
    from verl_specrollout.metrics import planner_metrics

    p = planner_with(knee_cost(), alpha=0.7, max_batch=64)
    for bsz, k in ((1, 4), (1, 4), (64, 0)):
        p.observe_step(bsz, bsz * (1 + k), k, 0.01)
    m = planner_metrics(p.stats())
    assert all(name.startswith("specrollout/") for name in m)
    assert m["specrollout/spec_off_fraction"] == pytest.approx(1 / 3)
    assert m["specrollout/mean_k/bs_1-1"] == 4 and m["specrollout/mean_k/bs_64-127"] == 0
    assert 0 < m["specrollout/alpha/pos1"] <= 1
    assert m["specrollout/num_draft_tokens"] >= m["specrollout/num_accepted_tokens"]


def test_draft_stall_detector_warns_once_when_version_stops(caplog):
    from verl_specrollout.metrics import DRAFT_STALE_STEPS, DraftStallDetector

    det = DraftStallDetector(patience=2)
    assert det.update(1, True)[DRAFT_STALE_STEPS] == 0
    assert det.update(2, True)[DRAFT_STALE_STEPS] == 0
    with caplog.at_level("WARNING", logger="verl_specrollout"):
        det.update(2, True)
        out = det.update(2, False)  # learner died: version stuck
        det.update(2, False)
    assert out[DRAFT_STALE_STEPS] == 2 and out["specrollout/learner/alive"] == 0.0
    assert sum("has not advanced" in r.getMessage() for r in caplog.records) == 1
    assert det.update(3, True)[DRAFT_STALE_STEPS] == 0  # recovers


def test_tried_cells_are_priced_by_their_measurements_not_a_misfit_model():
    """A step-time surface the linear model cannot fit (a per-step cost that jumps at K >= 3):
    cells the engine ran many times are priced near their measured median, unseen ones by the model."""

    def truth(tokens, requests, passes):
        return 4e-3 + 2e-5 * tokens + passes * 1e-3 + (6e-3 if passes >= 3 else 0.0)

    cm = StepCostModel()
    for _ in range(200):
        for k in (1, 2, 3, 4):
            cm.observe(8 * (1 + k), 8, k, truth(8 * (1 + k), 8, k))
    assert cm.fit()
    for k in (1, 2, 3, 4):
        t = truth(8 * (1 + k), 8, k)
        assert abs(cm.predict_local(8 * (1 + k), 8, k) / t - 1) < 0.05, k
    # A batch size never run: the model's price (no measured cell).
    assert cm.measured(64 * 3, 64, 2) is None
    assert cm.predict_local(64 * 3, 64, 2) == cm.predict(64 * 3, 64, 2)


# ------------------------------------------------------ numerics (numpy / scipy)
def test_bounded_least_squares_meets_the_optimality_conditions():
    """A coefficient the data push negative is held at 0, and the solution is the exact bounded
    optimum: zero gradient on free coefficients, non-negative gradient on those at their bound."""
    import numpy as np

    from verl_specrollout.planner.cost_model import weighted_least_squares

    rng = np.random.default_rng(0)
    x = rng.uniform(1, 100, size=(60, 3))
    design = np.column_stack([np.ones(60), x, np.zeros(60)])  # last column identically zero
    y = 2.0 + 0.5 * x[:, 0] - 0.3 * x[:, 1] + 0.1 * x[:, 2] + rng.normal(0, 0.5, 60)
    weights = rng.uniform(0.5, 2.0, 60)
    ridge = 1e-6
    beta = weighted_least_squares(design, y, weights, ridge=ridge, nonneg=np.array([False, True, True, True, True]))
    assert beta[2] == 0.0 and beta[4] == 0.0 and beta[1] > 0 and beta[3] > 0
    scale = np.sqrt(weights @ design**2 / weights.sum())
    penalty = 2 * ridge * weights.sum() * scale**2 * beta
    penalty[0] = 0.0
    gradient = -2 * design.T @ (weights * (y - design @ beta)) + penalty
    size = np.abs(2 * design.T @ (weights * y))
    free = [0, 1, 3]
    assert np.all(np.abs(gradient[free]) <= 1e-8 * size[free]), gradient
    assert gradient[2] > 0


def test_bucket_medians_and_array_lookups_match_one_cell_at_a_time():
    import statistics

    import numpy as np

    rnd = random.Random(5)
    cm = StepCostModel()
    cells = [(bsz * (1 + k), bsz, max(k, 1)) for bsz in (1, 3, 16, 17, 40, 300, 1000) for k in range(5)]
    seconds = {c: [] for c in cells}
    for c in cells:
        for _ in range(rnd.randint(1, 9)):  # odd and even counts
            t = 1e-3 * c[0] * rnd.uniform(0.5, 1.5)
            seconds[c].append(t)
            cm.observe(*c, t)
    assert cm.fit()
    for c in cells:
        assert cm.measured(*c) == (pytest.approx(statistics.median(seconds[c])), len(seconds[c]))
    unseen = [(5 * 3, 5, 2), (700 * 2, 700, 1)]
    tokens, requests, passes = (np.array(v) for v in zip(*(cells + unseen)))
    median, steps = cm.measured_many(tokens, requests, passes)
    assert steps[-2:].tolist() == [0, 0] and cm.measured(*unseen[0]) is None
    assert median[:-2].tolist() == [cm.measured(*c)[0] for c in cells]
    for scalar, array in ((cm.predict, cm.predict(tokens, requests, passes)),
                          (cm.predict_local, cm.predict_local(tokens, requests, passes))):
        assert array.tolist() == pytest.approx([scalar(*c) for c in cells + unseen], rel=1e-12)


def test_plan_equals_choose_k_at_every_grid_point():
    from verl_specrollout.planner.decision import plan_grid

    p = planner_with(knee_cost(), alpha=0.7, max_batch=256)
    assert (p.estimates.trusted_max_k(plan_grid(256)) == 4).all()  # every K was timed: no trust-region limit
    fresh = p.plan()
    current = [0] + [(b // 7) % 5 for b in range(1, 257)]
    sticky = p.plan(current=current)
    grid = plan_grid(256)
    for lo, hi in zip(grid, grid[1:] + [257]):
        e = p.estimates.expected_by_batch([lo])[0]
        assert set(fresh[lo:hi]) == {choose_k(lo, e, p.cost, 4, 1)[0]}, lo
        assert set(sticky[lo:hi]) == {choose_k(lo, e, p.cost, 4, 1, current[lo], p.hysteresis)[0]}, lo


def test_grouped_acceptance_counts_equal_request_by_request():
    """Requests are tallied per distinct (drafted, accepted) outcome; the counts must be what
    walking the requests one by one gives, including capping and requests that drafted nothing."""
    rnd = random.Random(9)
    est = AcceptanceEstimator(3, decay=1.0)
    trials, acc = [0] * 3, [0] * 3
    for _ in range(40):
        pairs = [(rnd.randint(-1, 5), rnd.randint(-1, 5)) for _ in range(rnd.randint(0, 30))]
        est.observe_requests(pairs)
        for n, a in pairs:
            n = min(n, 3)
            a = max(0, min(a, n))
            for i in range(max(0, min(a + 1, n))):
                trials[i] += 1
            for i in range(a):
                acc[i] += 1
    assert est.trials == trials and est.acc == acc
