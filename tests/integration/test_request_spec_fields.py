"""veRL's own speculation metrics (rollout/spec_accept_rate, rollout/spec_accept_length) are filled
from vLLM's per-request stats: the per-request fields must add up to vLLM's engine counters, and
veRL's own compute_spec_decode_metrics must turn them into an acceptance length that matches."""

import pytest

pytestmark = pytest.mark.integration


def test_request_fields_add_up_to_engine_counters():
    from vllm import SamplingParams, TokensPrompt
    from verl.trainer.ppo.ray_trainer import compute_spec_decode_metrics

    from verl_specrollout import compat
    from verl_specrollout.config import SpecRolloutConfig
    from verl_specrollout.testing.testbed import build_testbed
    from verl_specrollout.testing.testbed.measure import task_prompts
    from verl_specrollout.vllm_adapter.offline_engine import make_llm
    from verl_specrollout.vllm_adapter.spec_counters import read_counters, request_spec_fields

    assert compat.vllm_has_per_request_spec_metrics()
    tb = build_testbed("tiny")
    spec = SpecRolloutConfig.from_dict({"enable": True, "method": "eagle3", "draft_path": tb.eagle3_dir, "max_k": 3,
                                        "planner": {"mode": "static"}})
    llm = make_llm(tb.target_dir, spec, max_num_seqs=16, **{compat.VLLM_ARG_PER_REQUEST_SPEC_METRICS: "summary"})
    prompts = [p for p, _ in task_prompts(tb, 12, "test")]
    c0 = read_counters(llm)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts],
                        SamplingParams(temperature=1.0, max_tokens=64), use_tqdm=False)
    d = read_counters(llm) - c0
    fields = [request_spec_fields(o.outputs[0]) for o in outs]
    assert all(fields), "vLLM returned no per-request spec-decode stats"
    drafts = [f[compat.VERL_SPEC_DRAFT_TOKENS_FIELD] for f in fields]
    accepts = [f[compat.VERL_SPEC_ACCEPTED_TOKENS_FIELD] for f in fields]
    verifies = [f[compat.VERL_SPEC_VERIFY_STEPS_FIELD] for f in fields]
    assert sum(drafts) == d.num_draft_tokens and sum(accepts) == d.num_accepted_tokens
    assert sum(verifies) == d.num_drafts
    metrics = compute_spec_decode_metrics(drafts, accepts, verifies)
    assert 1.0 < metrics["rollout/spec_accept_length"] <= 4.0
    assert 0.0 < metrics["rollout/spec_accept_rate"] <= 1.0
    # veRL averages per request, vLLM per step: close, not equal.
    assert metrics["rollout/spec_accept_length"] == pytest.approx(d.mean_acceptance_length, rel=0.25)
