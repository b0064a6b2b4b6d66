"""Live draft reload inside a running vLLM engine, judged by vLLM's own acceptance counters.

A reload that is silently skipped fails here: loading a random draft must collapse acceptance,
and reloading the trained one must bring it back.
"""
import os

import pytest
import torch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from verl_specrollout.draft.eagle3 import Eagle3Config, Eagle3Draft, load_vllm_checkpoint
    from verl_specrollout.learner.publisher import Publisher
    from verl_specrollout.testing.testbed.toy import get_toy

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("toy")
    toy = get_toy()  # cached tiny target + EAGLE-3 head trained by the learner's own code path
    target = toy["target"]
    good = load_vllm_checkpoint(toy["draft"])
    torch.manual_seed(123)
    bad = Eagle3Draft(Eagle3Config(**{**good.config.__dict__}))
    pub = Publisher(str(root / "pub"), keep=10)
    pub.publish(good, 1)
    pub.publish(bad, 2)
    pub.publish(good, 3)
    return {"target": target, "pub": str(root / "pub"), "aux": toy["aux_layer_ids"]}


def _engine(target, draft_dir):
    from verl_specrollout.config import SpecRolloutConfig
    from verl_specrollout.vllm_adapter.offline_engine import make_llm

    spec = SpecRolloutConfig.from_dict({"enable": True, "method": "eagle3", "draft_path": draft_dir, "max_k": 3,
                                        "planner": {"mode": "static"}})
    return make_llm(target, spec, skip_tokenizer_init=True, max_model_len=256, gpu_memory_utilization=0.08)


def _acceptance(llm, n=8, tokens=32):
    from vllm import SamplingParams, TokensPrompt

    from verl_specrollout.vllm_adapter.spec_counters import read_counters
    from verl_specrollout.testing.testbed.toy import toy_prompts

    c0 = read_counters(llm)
    llm.generate([TokensPrompt(prompt_token_ids=p) for p in toy_prompts(n, seed=99)],
                 SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True), use_tqdm=False)
    return (read_counters(llm) - c0).mean_acceptance_length


def test_fresh_engine_loads_published_format_and_live_reload(toy, caplog):
    from verl_specrollout.vllm_adapter.draft_reload import DraftReloader

    pub = toy["pub"]
    llm = _engine(toy["target"], os.path.join(pub, "v000001"))  # checkpoint format loads in a fresh engine
    rel = DraftReloader.for_llm(llm, pub, initial_version=1)
    a_good = _acceptance(llm)
    assert a_good > 1.5, f"trained toy draft should be accepted (got {a_good})"

    assert rel.load(os.path.join(pub, "v000002"), 2) == 2 and rel.current_draft_version == 2
    a_bad = _acceptance(llm)
    assert a_bad < a_good - 0.4 and a_bad < 1.3, (a_good, a_bad)

    # a broken version keeps the last good one and says why at WARNING
    broken = os.path.join(pub, "v000009")
    os.makedirs(broken, exist_ok=True)
    assert rel.load(broken, 9) == 2
    assert rel.last_result["ok"] is False and rel.failures == 1
    assert any("failed" in r.getMessage() or "not loaded" in r.getMessage() for r in caplog.records)

    assert rel.maybe_reload() == 3  # LATEST = v000003 (the good draft again)
    a_back = _acceptance(llm)
    assert abs(a_back - a_good) < 0.15, (a_good, a_back)
    print(f"acceptance length good={a_good:.3f} random={a_bad:.3f} reloaded-good={a_back:.3f}")
