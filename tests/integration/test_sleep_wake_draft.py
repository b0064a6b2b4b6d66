"""The draft survives sleep mode, every tensor of it, and level 1 costs no reload.

On a GPU, veRL's HYBRID rollout sleeps vLLM at level 2 between rollouts
(``vLLMHttpServer._resolve_sleep_level``): every tensor in vLLM's "weights" pool is discarded, the
draft's parameters and buffers too, and veRL's weight sync restores only the target. What vLLM
itself saves across it (``vllm/v1/worker/gpu_worker.py``): the target's buffers in every version,
the draft's buffers from 0.27 (``Worker._sleep_saved_draft_buffers``), draft parameters never.
vLLM-CPU has no sleep mode, so the condition is emulated: the engine adapter below gives veRL's own
server code (our ``SpecRolloutHttpServer`` over veRL's ``vLLMHttpServer``: sleep, wake_up,
release_kv_cache, resume_kv_cache) a real in-process vLLM-CPU engine whose ``sleep(level=2)``
overwrites every draft tensor that is not the target's -- floating parameters and buffers with
noise, integer tensors with out-of-range values, what uninitialised memory may hold -- and saves and
restores the draft's buffers as the emulated vLLM version does (``vllm024``: not at all; ``vllm031``:
as 0.27+). ``vllm024`` also gives a full-vocabulary EAGLE-3 head the ``draft_id_to_target_id``
Parameter 0.24 builds for every head (zeros; ``llama_eagle3.py`` ~323; 0.31 builds it only for a
reduced vocabulary). The target's weights are left alone: on a GPU veRL's weight sync restores them.

Checked: after the wake-up every draft tensor equals what it held before the sleep (bit for bit),
and acceptance -- vLLM's own counter -- collapses while the draft is discarded and comes back, with
the learner off (the README's one-override usage) and on. Level 1 (COLOCATED mode) discards nothing:
no host copy, no reload.
"""

import asyncio
import gc

import pytest
import torch

pytestmark = pytest.mark.integration

VLLM_SAVED_DRAFT_BUFFERS = "_sleep_saved_draft_buffers"  # vLLM 0.27+ Worker attribute (compat has it too)


def _worker(self):
    """The vLLM Worker behind a collective_rpc callable's ``self`` (the in-process wrapper or the worker)."""
    return getattr(self, "worker", None) or self


def _storages(module):
    return {t.untyped_storage().data_ptr() for t in list(module.parameters()) + list(module.buffers()) if t.numel()}


def _own_tensors(self):
    """The draft's non-empty parameters and buffers whose storage is not the target's."""
    from verl_specrollout.vllm_adapter.draft_reload import _get_draft_model, _get_target_model

    draft, target = _get_draft_model(self), _get_target_model(self)
    shared = _storages(target)
    out = {}
    for name, t in list(draft.named_parameters()) + list(draft.named_buffers()):
        if t is not None and t.numel() and t.untyped_storage().data_ptr() not in shared:
            out[name] = t
    return out


def _emulate_vllm024(self):
    """Inside the worker: what vLLM 0.24 has that 0.31 has not. Its Worker saves no draft buffers across
    sleep, and every EAGLE-3 head carries draft_id_to_target_id (zeros for a full vocabulary)."""
    from verl_specrollout.vllm_adapter.draft_reload import _get_draft_model

    worker = _worker(self)
    if hasattr(worker, VLLM_SAVED_DRAFT_BUFFERS):
        delattr(worker, VLLM_SAVED_DRAFT_BUFFERS)
    draft = _get_draft_model(self)
    if hasattr(draft, "draft_id_to_target_id") and draft.draft_id_to_target_id is None:
        draft.draft_id_to_target_id = torch.nn.Parameter(
            torch.zeros(draft.config.draft_vocab_size, dtype=torch.long), requires_grad=False)
        return True
    return False


def _sleep_level2_in_worker(self):
    """Inside the worker: vLLM's Worker.sleep(level=2) (the 0.27+ draft-buffer save where the emulated
    version has it), then what the wake-up hands back in place of every discarded draft tensor."""
    from verl_specrollout.vllm_adapter.draft_reload import _get_draft_model

    worker = _worker(self)
    draft = _get_draft_model(self)
    if hasattr(worker, VLLM_SAVED_DRAFT_BUFFERS):
        setattr(worker, VLLM_SAVED_DRAFT_BUFFERS, {n: b.cpu().clone() for n, b in draft.named_buffers()})
    g = torch.Generator().manual_seed(0)
    kinds = {"float": 0, "integer": 0}
    with torch.no_grad():
        for t in _own_tensors(self).values():
            if t.is_floating_point():
                t.data.copy_(torch.randn(t.shape, generator=g) * 0.05)
                kinds["float"] += 1
            else:
                t.data.copy_(torch.randint(1 << 20, 1 << 40, t.shape, generator=g))
                kinds["integer"] += 1
    return kinds


def _wake_weights_in_worker(self):
    """Inside the worker: vLLM's Worker.wake_up with the weights tag puts saved draft buffers back (0.27+)."""
    from verl_specrollout.vllm_adapter.draft_reload import _get_draft_model

    worker = _worker(self)
    saved = getattr(worker, VLLM_SAVED_DRAFT_BUFFERS, None)
    if saved:
        with torch.no_grad():
            for name, b in _get_draft_model(self).named_buffers():
                if name in saved:
                    b.data.copy_(saved[name])
        setattr(worker, VLLM_SAVED_DRAFT_BUFFERS, {})


def _draft_state(self):
    return {n: t.detach().cpu().clone() for n, t in _own_tensors(self).items()}


class EmulatedSleepEngine:
    """The slice of vLLM's AsyncLLM that veRL's server calls around sleep, over an in-process LLM."""

    def __init__(self, llm):
        self.llm = llm
        self.calls = []

    async def sleep(self, level=1, mode="abort"):
        self.calls.append(("sleep", level))
        if level >= 2:
            kinds = self.llm.collective_rpc(_sleep_level2_in_worker)[0]
            assert kinds["float"] > 0, kinds

    async def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags or ())))
        if tags is None or "weights" in tags:
            self.llm.collective_rpc(_wake_weights_in_worker)

    async def reset_prefix_cache(self, reset_connector=False):
        self.llm.reset_prefix_cache()

    async def reset_mm_cache(self):
        pass

    async def reset_encoder_cache(self):
        pass

    async def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        self.calls.append(("rpc", method if isinstance(method, str) else method.__name__))
        return self.llm.collective_rpc(method, timeout=timeout, args=args, kwargs=kwargs)


def _server(engine, spec: dict, mode: str = "HYBRID"):
    from omegaconf import OmegaConf
    from verl.workers.rollout.replica import RolloutMode

    from verl_specrollout.verl_adapter.server import SpecRolloutHttpServer

    server = SpecRolloutHttpServer.__new__(SpecRolloutHttpServer)  # no Ray actor, no HTTP front end
    server.config = OmegaConf.create({"enable_sleep_mode": True, "free_cache_engine": True, "mtp": None,
                                      "custom": {"specrollout": spec}})
    server.engine = engine
    server.node_rank, server.replica_rank, server.global_steps = 0, 0, 0
    server.rollout_mode = getattr(RolloutMode, mode)
    server.model_config = OmegaConf.create({"lora_rank": 0, "lora": {}})  # no LoRA: veRL picks level 2
    server.init_specrollout()
    return server


def _acceptance(llm, prompts) -> float:
    from vllm import SamplingParams, TokensPrompt

    from verl_specrollout.vllm_adapter.spec_counters import read_counters

    c0 = read_counters(llm)
    llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], SamplingParams(temperature=0.0, max_tokens=48),
                 use_tqdm=False)
    return (read_counters(llm) - c0).mean_acceptance_length


def _assert_same_state(llm, before, when):
    after = llm.collective_rpc(_draft_state)[0]
    assert set(after) == set(before), (when, set(before) ^ set(after))
    differ = sorted(n for n in before if not torch.equal(before[n], after[n]))
    assert not differ, f"{when}: draft tensors not restored: {differ}"


@pytest.fixture(scope="module")
def testbed():
    from verl_specrollout.testing.testbed import build_testbed
    from verl_specrollout.testing.testbed.measure import task_prompts

    tb = build_testbed("tiny")
    return tb, [p for p, _ in task_prompts(tb, 12, "test")]


@pytest.fixture
def engine(testbed):
    """engine(spec, vllm_version) -> an in-process LLM; torn down before the next test starts one (two
    in-process engines in one process share vLLM's parallel state)."""
    from verl_specrollout import compat
    from verl_specrollout.config import SpecRolloutConfig
    from verl_specrollout.vllm_adapter.offline_engine import make_llm

    made = []

    def make(spec, vllm_version):
        llm = make_llm(testbed[0].target_dir, SpecRolloutConfig.from_dict(spec), max_num_seqs=16,
                       worker_extension_cls=compat.SPECROLLOUT_WORKER_EXTENSION)
        if vllm_version == "vllm024":
            llm.collective_rpc(_emulate_vllm024)
        made.append(llm)
        return llm

    yield make
    made.clear()
    gc.collect()


@pytest.mark.parametrize("method,vllm_version", [("eagle3", "vllm024"), ("draft_model", "vllm024"),
                                                 ("eagle3", "vllm031")])
def test_draft_is_restored_after_level2_sleep_without_learner(testbed, engine, method, vllm_version):
    from verl_specrollout import compat

    tb, prompts = testbed
    draft = tb.eagle3_dir if method == "eagle3" else tb.draft_lm_dir
    spec = {"enable": True, "method": method, "draft_path": draft, "max_k": 3, "planner": {"mode": "static"}}
    llm = engine(spec, vllm_version)
    server = _server(EmulatedSleepEngine(llm), spec)
    assert server._get_worker_extension_cls() == compat.SPECROLLOUT_WORKER_EXTENSION
    before = _acceptance(llm, prompts)
    assert before > 1.5, before
    state = llm.collective_rpc(_draft_state)[0]
    assert any(not n.endswith("weight") for n in state), sorted(state)  # buffers (attention scales, ...)
    if method == "eagle3":  # the head's own RoPE cache (the draft LM shares the target's here)
        assert any("cos_sin_cache" in n for n in state), sorted(state)
    if (method, vllm_version) == ("eagle3", "vllm024"):
        assert "draft_id_to_target_id" in state, sorted(state)  # in no checkpoint of a full-vocabulary head

    # One rollout cycle of veRL's HYBRID mode: sleep after the rollout, wake up for the next one.
    asyncio.run(server.sleep())
    assert ("sleep", 2) in server.engine.calls, server.engine.calls  # veRL chose level 2
    asyncio.run(server.wake_up())
    _assert_same_state(llm, state, "after wake_up")
    after_wake = _acceptance(llm, prompts)
    assert after_wake == pytest.approx(before, abs=0.05), (before, after_wake)

    # The weight-sync path: release (sleep + wake weights), sync, resume.
    asyncio.run(server.release_kv_cache())
    asyncio.run(server.resume_kv_cache())
    _assert_same_state(llm, state, "after resume_kv_cache")
    after_resume = _acceptance(llm, prompts)
    assert after_resume == pytest.approx(before, abs=0.05), (before, after_resume)
    metrics = asyncio.run(server.specrollout_step_metrics())
    assert metrics["draft_restores_after_sleep"] == 2 and metrics["draft_version_live"] == 0, metrics
    assert metrics.get("draft_reload_failures", 0) == 0, metrics


def test_emulated_sleep_discards_the_draft(testbed, engine):
    """The emulation bites: generating straight on the engine between sleep and wake-up (the server's
    own generate would restore first) runs a discarded draft. Floats only: integer garbage in a
    0.24 head's draft_id_to_target_id would not draft at all (an out-of-range scatter)."""
    tb, prompts = testbed
    spec = {"enable": True, "method": "eagle3", "draft_path": tb.eagle3_dir, "max_k": 3, "planner": {"mode": "static"}}
    llm = engine(spec, "vllm031")
    server = _server(EmulatedSleepEngine(llm), spec)
    before = _acceptance(llm, prompts)
    asyncio.run(server.sleep())
    assert _acceptance(llm, prompts) < 1.2, "the emulated sleep did not discard the draft"
    asyncio.run(server.wake_up())
    assert _acceptance(llm, prompts) == pytest.approx(before, abs=0.05)


def test_restore_after_sleep_loads_the_newest_published_draft(testbed, engine, tmp_path):
    from verl_specrollout.draft.eagle3 import load_vllm_checkpoint
    from verl_specrollout.learner.publisher import Publisher

    tb, prompts = testbed
    Publisher(str(tmp_path / "pub")).publish(load_vllm_checkpoint(tb.eagle3_dir), 4)
    spec = {"enable": True, "method": "eagle3", "draft_path": tb.eagle3_dir, "max_k": 3,
            "planner": {"mode": "static"}, "learner": {"enable": True, "publish_dir": str(tmp_path / "pub")}}
    llm = engine(spec, "vllm024")
    server = _server(EmulatedSleepEngine(llm), spec)
    before = _acceptance(llm, prompts)
    state = llm.collective_rpc(_draft_state)[0]
    asyncio.run(server.sleep())
    # veRL's step order: wake weights, sync the target, then set_global_steps.
    asyncio.run(server.wake_up(tags=["weights"]))
    asyncio.run(server.set_global_steps(1))
    assert server.draft.live_version() == 4
    _assert_same_state(llm, state, "after set_global_steps")
    assert _acceptance(llm, prompts) == pytest.approx(before, abs=0.05)


class _RecordingEngine:
    """No vLLM: records what the server asks of the engine; every worker call succeeds."""

    def __init__(self):
        self.calls = []

    async def sleep(self, level=1, mode="abort"):
        self.calls.append(("sleep", level))

    async def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags or ())))

    async def reset_prefix_cache(self, reset_connector=False):
        pass

    async def reset_encoder_cache(self):
        pass

    async def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        self.calls.append(("rpc", method))
        return [{"ok": True, "version": args[1] if len(args) > 1 else None, "error": None, "loaded": 1,
                 "skipped": [], "kept": 0, "kept_bytes": 0, "names": []}]


@pytest.mark.parametrize("mode,lora,level", [("COLOCATED", False, 1), ("HYBRID", True, 1), ("HYBRID", False, 2)])
def test_sleep_level_1_pays_no_reload(mode, lora, level):
    """veRL sleeps COLOCATED engines (and HYBRID ones serving LoRA adapters) at level 1: weights go to
    host memory and come back whole, so the draft is neither kept nor reloaded. Level 2 does both."""
    from omegaconf import OmegaConf

    spec = {"enable": True, "method": "eagle3", "draft_path": "/draft", "max_k": 3}
    server = _server(_RecordingEngine(), spec, mode=mode)
    if lora:
        server.model_config = OmegaConf.create({"lora_rank": 8, "lora": {"merge": False}})
    asyncio.run(server.sleep())
    asyncio.run(server.wake_up())
    asyncio.run(server.release_kv_cache())
    asyncio.run(server.resume_kv_cache())
    sleeps = [c for c in server.engine.calls if c[0] == "sleep"]
    rpcs = [c[1] for c in server.engine.calls if c[0] == "rpc"]
    assert sleeps and all(c == ("sleep", level) for c in sleeps), server.engine.calls
    metrics = asyncio.run(server.specrollout_step_metrics())
    if level == 1:
        assert rpcs == [] and metrics["draft_restores_after_sleep"] == 0, (server.engine.calls, metrics)
    else:
        assert rpcs.count("specrollout_reload_draft") == len(sleeps) == metrics["draft_restores_after_sleep"], rpcs
        assert rpcs.count("specrollout_keep_draft") == len(sleeps), rpcs
