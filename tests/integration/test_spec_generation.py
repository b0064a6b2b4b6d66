"""Speculative generation on the path veRL's server uses, with the trained testbed drafts.

Which path: `engine/local.make_llm` starts `vllm.LLM` with exactly the kwargs our veRL server
subclass injects (`engine/speculative.build_engine_kwargs`: speculative_config, the dynamic-K
table, our SpecRolloutScheduler, additional_config). veRL's HTTP server and Ray actor around the
engine are exercised by test_verl_spec_grpo.py; here one in-process engine keeps it fast.
"""

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def testbed():
    from verl_specrollout.testing.testbed import build_testbed

    return build_testbed("tiny")


@pytest.fixture(scope="module")
def prompts(testbed):
    from transformers import AutoTokenizer

    from verl_specrollout.testing.testbed.task import make_examples, prompt_messages

    tok = AutoTokenizer.from_pretrained(testbed.target_dir)
    return [tok.apply_chat_template(prompt_messages(e), add_generation_prompt=True, tokenize=False)
            for e in make_examples(24, seed=99)]


def _generate(llm, prompts, params):
    return [list(c.token_ids) for o in llm.generate(prompts, params, use_tqdm=False) for c in o.outputs]


def test_eagle3_greedy_equals_plain_and_accepts(testbed, prompts):
    from vllm import SamplingParams

    from verl_specrollout.config import SpecRolloutConfig
    from verl_specrollout.vllm_adapter.offline_engine import make_llm
    from verl_specrollout.vllm_adapter.spec_counters import read_counters

    greedy = SamplingParams(temperature=0.0, max_tokens=96)
    sampled = SamplingParams(n=4, temperature=1.0, max_tokens=96)
    plain = make_llm(testbed.target_dir)
    ref = _generate(plain, prompts, greedy)
    del plain

    cfg = SpecRolloutConfig.from_dict({"enable": True, "method": "eagle3", "draft_path": testbed.eagle3_dir,
                                       "max_k": 4, "planner": {"mode": "static"}})
    spec = make_llm(testbed.target_dir, cfg)
    c0 = read_counters(spec)
    out = _generate(spec, prompts, greedy)
    c1 = read_counters(spec)
    assert out == ref, "speculative greedy output differs from plain greedy output"
    greedy_len = (c1 - c0).mean_acceptance_length
    assert greedy_len > 1.5, greedy_len

    # T=1 (GRPO's setting): acceptance must stay well above 1 — the vLLM-CPU kernel bug this
    # project fixes drops it to ~1.0-1.2 (see test_lossless_cpu.py for the distribution test).
    _generate(spec, prompts, sampled)
    t1_len = (read_counters(spec) - c1).mean_acceptance_length
    assert t1_len > 1.5, t1_len


def _count_draft_forwards(self):
    """Inside the worker: count forwards of the draft model (a hook on its top module)."""
    m = self.model_runner.drafter.model
    if not hasattr(m, "_sr_calls"):
        m._sr_calls = 0

        def hook(mod, args):
            mod._sr_calls += 1

        m.register_forward_pre_hook(hook)
    return m._sr_calls


def test_skip_draft_at_k0_runs_no_draft_pass_and_stays_exact(testbed, prompts):
    """planner.skip_draft_at_k0 (vllm_adapter/k0_skip.py): a K=0 step runs no draft forward, and a
    rollout that switches K=0 -> K=4 mid-way (drafts then read a KV cache with holes) is still
    exactly the target's greedy output."""
    from vllm import SamplingParams

    from verl_specrollout.config import SpecRolloutConfig
    from verl_specrollout import compat
    from verl_specrollout.vllm_adapter.offline_engine import make_llm
    from verl_specrollout.vllm_adapter.spec_counters import read_counters

    plain = make_llm(testbed.target_dir)
    # Lengths 16..128: the batch shrinks from 8 to 1 while it runs.
    params = [SamplingParams(temperature=0.0, max_tokens=16 * (i + 1), ignore_eos=True) for i in range(8)]
    ref = [list(o.outputs[0].token_ids) for o in plain.generate(prompts[:8], params, use_tqdm=False)]
    del plain

    cfg = SpecRolloutConfig.from_dict({"enable": True, "method": "eagle3", "draft_path": testbed.eagle3_dir,
                                       "max_k": 4, "planner": {"mode": "adaptive", "skip_draft_at_k0": True}})
    spec = make_llm(testbed.target_dir, cfg)
    sched = compat.in_process_scheduler(spec)
    assert sched.planner.zero_k_passes == 0

    sched.set_policy("static", [[1, 16, 0]])
    n0 = spec.collective_rpc(_count_draft_forwards)[0]
    c0 = read_counters(spec)
    spec.generate(prompts[:8], params, use_tqdm=False)
    assert spec.collective_rpc(_count_draft_forwards)[0] == n0, "a K=0 step ran the draft model"
    assert (read_counters(spec) - c0).num_drafts == 0

    # K=0 while 5+ requests run, K=4 in the tail: positions decoded at K=0 have no draft KV.
    sched.set_policy("static", [[1, 4, 4], [5, 16, 0]])
    c1 = read_counters(spec)
    out = [list(o.outputs[0].token_ids) for o in spec.generate(prompts[:8], params, use_tqdm=False)]
    d = read_counters(spec) - c1
    assert out == ref, "greedy output with K=0 skips differs from plain greedy output"
    assert spec.collective_rpc(_count_draft_forwards)[0] > n0 and d.num_drafts > 0
    assert d.mean_acceptance_length > 1.2, d.mean_acceptance_length  # holes cost acceptance, not all of it
