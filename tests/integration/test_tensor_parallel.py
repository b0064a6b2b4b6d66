"""Tensor parallelism (rollout TP = 2) and data parallelism (actor FSDP2 on 2 ranks), on CPU.

Rollout side: vLLM-CPU runs the tiny testbed target with its EAGLE-3 head at
``tensor_parallel_size=2`` (``distributed_executor_backend="mp"``: one worker process per rank, each
pinned to one core by ``VLLM_CPU_OMP_THREADS_BIND="0|1"``), engines built through our kwargs path
(offline_engine.make_llm -> engine_kwargs.build_engine_kwargs) with our worker extension, as veRL's
server starts them. Every check reads *each rank* through ``collective_rpc`` of the probes in
verl_specrollout/testing/tp_probe.py:

1. live draft reload (draft_reload.py, by method name as the server calls it): every rank reports
   the new version and holds its own shard of it (compared with the checkpoint tensors sliced as
   vLLM's replicated / QKV / merged-column / row-parallel layers slice them); a fresh TP=2 engine
   started on that version holds the same shards and drafts the same tokens, step for step;
2. sleep level 2 as emulated on CPU (draft weights scrambled on every rank) through our server's
   sleep / wake-up path: every rank is back on the right version (the live one; the newest one
   when the learner published during the sleep);
3. the planner's K table and the K=0 draft skip: every rank drafts the K the scheduler's table
   gives for the step's batch size, and both ranks skip the draft forward at K=0;
4. Best-of-N group drafts (eagle3+group): both ranks hand the scheduler the same drafts every step;
5. greedy speculative output at TP=2 equals plain TP=2 output, token for token.

Actor side (6): FSDP2 over 2 gloo ranks (verl_specrollout/testing/fsdp_rig.py): each rank captures
its own data-parallel shard, equal to an unsharded forward, and ``policy_shared_weights`` returns the
full embedding / lm_head on both ranks.

The machine has 2 cores: at most one TP=2 engine is alive at a time (``_Slot``), and generations
are short. Not settled on CPU (a GPU cluster run is): NCCL collectives and custom all-reduce (here
vLLM-CPU's shared-memory / gloo groups), CUDA graphs captured per rank under dynamic K, vLLM's real
sleep allocator (here level 2 is emulated by scrambling the draft), asynchronous scheduling (off on
vLLM-CPU), and bf16 numerics of the draft shards.
"""

from __future__ import annotations

import asyncio
import gc
import os

import pytest
import torch

pytestmark = pytest.mark.integration

TP = 2
MAX_K = 3
GROUP_K = 4
G = 4
# Batch sizes <= 8 draft MAX_K; the second row only makes the table dynamic (our scheduler installs it).
TABLE = [[1, 8, MAX_K], [9, 16, 2]]
ENGINE_KW = dict(tensor_parallel_size=TP, distributed_executor_backend="mp", max_model_len=256, max_num_seqs=16,
                 kv_cache_memory_bytes=128 << 20, skip_tokenizer_init=True)


# ----------------------------------------------------------------------------- engines
class _Slot:
    """At most one TP=2 engine in this module: asking for another one shuts the live one down."""

    def __init__(self):
        self.name, self.llm = None, None

    def get(self, name, make):
        if self.name != name:
            self.close()
            self.llm, self.name = make(), name
        return self.llm

    def close(self):
        llm, self.llm, self.name = self.llm, None, None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            del llm
            gc.collect()


@pytest.fixture(scope="module")
def slot():
    pytest.importorskip("vllm")
    if (os.cpu_count() or 1) < TP:
        pytest.skip(f"TP={TP} needs {TP} cores")
    saved = {k: os.environ.get(k) for k in ("VLLM_CPU_OMP_THREADS_BIND",)}
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "|".join(str(i) for i in range(TP)))  # one core per rank
    s = _Slot()
    yield s
    s.close()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def tb():
    from verl_specrollout.testing.testbed import build_testbed

    return build_testbed("tiny")


@pytest.fixture(scope="module")
def prompts(tb):
    from verl_specrollout.testing.testbed.measure import task_prompts

    return [p for p, _ in task_prompts(tb, 8)]


def _spec_dict(draft_dir, method="eagle3", k=MAX_K, table=TABLE, **extra):
    return {"enable": True, "method": method, "draft_path": str(draft_dir), "max_k": k,
            "planner": {"mode": "static", "table": table, "skip_draft_at_k0": True}, **extra}


def _make(tb, spec: dict | None):
    from verl_specrollout import compat
    from verl_specrollout.config import SpecRolloutConfig
    from verl_specrollout.testing import tp_probe
    from verl_specrollout.vllm_adapter.offline_engine import make_llm

    if spec is None:
        llm = make_llm(tb.target_dir, **ENGINE_KW)
    else:
        llm = make_llm(tb.target_dir, SpecRolloutConfig.from_dict(spec), **ENGINE_KW,
                       worker_extension_cls=compat.SPECROLLOUT_WORKER_EXTENSION)
    ranks = llm.collective_rpc(tp_probe.tp_rank)
    assert [r["tp_rank"] for r in ranks] == list(range(TP)) and {r["tp_size"] for r in ranks} == {TP}, ranks
    assert len({r["pid"] for r in ranks}) == TP, "each TP rank runs in its own worker process"
    return llm


def _greedy(llm, batch, max_tokens):
    from vllm import SamplingParams, TokensPrompt

    if isinstance(max_tokens, int):
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    else:
        params = [SamplingParams(temperature=0.0, max_tokens=m, ignore_eos=True) for m in max_tokens]
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in batch], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def _batches(prompts):
    """Every batch the spec engines generate, with its lengths: plain TP=2 decodes each once."""
    return {
        "cmp": (prompts[:4], 20),                              # reload vs fresh engine
        "ktable": (prompts[4:8], [6, 10, 14, 18]),             # the batch shrinks 4 -> 1
        "plain_eq": (prompts[:6], 32),                         # check 5
        "group": ([p for p in prompts[:2] for _ in range(G)], 24),  # GRPO-shaped: 2 prompts x G
    }


@pytest.fixture(scope="module")
def plain(slot, tb, prompts):
    llm = slot.get("plain", lambda: _make(tb, None))
    return {name: _greedy(llm, b, n) for name, (b, n) in _batches(prompts).items()}


@pytest.fixture(scope="module")
def pub(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tp_pub") / "pub")


def _publish(tb, pub_dir, version, seed):
    """A new draft version: the trained head with every tensor scaled by 1 + 2% noise (a learner
    step's worth of change: every shard differs from the previous version, acceptance stays)."""
    from verl_specrollout.draft.eagle3 import load_vllm_checkpoint
    from verl_specrollout.learner.publisher import Publisher

    model = load_vllm_checkpoint(tb.eagle3_dir)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.mul_(1 + 0.02 * torch.randn(p.shape, generator=g))
    return Publisher(pub_dir, keep=10).publish(model, version)


def _eagle3_engine(slot, tb, pub):
    spec = _spec_dict(tb.eagle3_dir, learner={"enable": True, "publish_dir": pub})
    return slot.get("eagle3", lambda: _make(tb, spec)), spec


# ----------------------------------------------------------------------------- shard expectations
def _checkpoint(ckpt_dir) -> dict:
    from safetensors.torch import load_file

    from verl_specrollout.draft.format import find_weight_files

    sd = {}
    for f in find_weight_files(ckpt_dir):
        sd.update(load_file(os.path.join(ckpt_dir, f)))
    return sd


# vLLM's fused layers of the EAGLE-3 Llama head: its parameter -> the checkpoint tensors stacked in it.
_STACKED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def expected_shard(ckpt: dict, name: str, cls: str, rank: int, tp: int) -> torch.Tensor:
    """The slice of the checkpoint that vLLM's layer ``cls`` gives TP rank ``rank`` for ``name``.

    ReplicatedLinear / RMSNorm: the whole tensor; RowParallelLinear: input columns split in ``tp``;
    QKVParallelLinear / MergedColumnParallelLinear: each stacked tensor's output rows split in
    ``tp``, this rank's slices concatenated (q, k, v / gate, up), as their weight loaders do
    (num_kv_heads >= tp here, so no K/V replication)."""
    hf = name[len("model."):] if name.startswith("model.") else name
    hf = hf.replace("layers.0.", "midlayer.")
    fused = next((f for f in _STACKED if f".{f}." in hf), None)
    if fused is not None:
        assert cls in ("QKVParallelLinear", "MergedColumnParallelLinear"), (name, cls)
        parts = [ckpt[hf.replace(fused, part)] for part in _STACKED[fused]]
        return torch.cat([p.chunk(tp, dim=0)[rank] for p in parts], dim=0)
    full = ckpt[hf]
    if cls in ("ReplicatedLinear", "RMSNorm"):
        return full
    if cls == "RowParallelLinear":
        return full.chunk(tp, dim=1)[rank]
    if cls == "ColumnParallelLinear":
        return full.chunk(tp, dim=0)[rank]
    raise AssertionError(f"no sharding rule for {name} ({cls}): extend expected_shard")


def assert_ranks_hold(states: list, ckpt_dir: str, version) -> None:
    """Every rank: our reload's version, and each of the draft's own parameters equal to its slice of
    the checkpoint in ``ckpt_dir``; every checkpoint tensor is used by some parameter."""
    ckpt = _checkpoint(ckpt_dir)
    assert [s["tp_rank"] for s in states] == list(range(TP))
    for s in states:
        assert s["version"] == version, f"rank {s['tp_rank']} reports draft v{s['version']}, expected v{version}"
        own = {n: e for n, e in s["params"].items() if not e["shared"]}
        assert own, "the draft has no parameters of its own"
        for n, e in own.items():
            want = expected_shard(ckpt, n, e["cls"], s["tp_rank"], TP)
            assert e["tensor"].shape == want.shape, (s["tp_rank"], n, e["tensor"].shape, want.shape)
            assert torch.equal(e["tensor"], want.to(e["tensor"].dtype)), \
                f"rank {s['tp_rank']}: {n} ({e['cls']}) is not its shard of {ckpt_dir}"
    used = set()
    for n, e in states[0]["params"].items():
        hf = n[len("model."):].replace("layers.0.", "midlayer.") if n.startswith("model.") else n
        fused = next((f for f in _STACKED if f".{f}." in hf), None)
        if fused:
            used.update(hf.replace(fused, part) for part in _STACKED[fused])
        else:
            used.add(hf)
    assert set(ckpt) <= used, f"checkpoint tensors no draft parameter holds: {sorted(set(ckpt) - used)}"


def _own_shards(states):
    return [{n: e["tensor"] for n, e in s["params"].items() if not e["shared"]} for s in states]


def _by_request(recs):
    """Per rank: the recorded drafts per step, request ids replaced by their order of arrival
    (engines number requests differently)."""
    out = []
    for rec in recs:
        ids = sorted({r for d in rec["drafts"] for r in d["drafts"]}, key=lambda r: int(r.split("-")[0]))
        order = {r: i for i, r in enumerate(ids)}
        out.append([(d["k"], sorted((order[r], v) for r, v in d["drafts"].items())) for d in rec["drafts"]])
    return out


# ----------------------------------------------------------------------------- 6. actor side (no engine)
def test_tp2_fsdp2_capture_and_shared_weights_on_two_ranks(slot, tb, tmp_path):
    """FSDP2 on 2 gloo ranks: each rank captures its own data-parallel shard (equal to an unsharded
    forward of those sequences), honours its share of the step budget, and policy_shared_weights
    all-gathers the full embedding and (moved) lm_head on both ranks."""
    from verl_specrollout.testing import fsdp_rig

    slot.close()  # the two ranks get the two cores
    res = fsdp_rig.launch(tb.target_dir, tb.aux_layer_ids, str(tmp_path / "fsdp"), world=TP, n_seqs=6)
    ref = fsdp_rig.load_target(tb.target_dir)
    with torch.no_grad():
        ref.lm_head.weight.add_(fsdp_rig.POLICY_DELTA)
    batch = fsdp_rig.global_batch(ref.config.vocab_size, 6)
    aux = list(tb.aux_layer_ids)
    for r in res:
        rank = r["rank"]
        # really sharded: each rank holds half the rows of the embedding and lm_head
        assert all(shape[0] * TP == ref.config.vocab_size for shape in r["local_shapes"].values()), r["local_shapes"]
        mine = fsdp_rig.dp_shard(batch, rank, TP)
        assert [(p.tolist(), q.tolist()) for p, q in r["seqs"]] == [(p.tolist(), q.tolist()) for p, q in mine]
        assert r["counts"]["kept_sequences"] == len(mine) and r["counts"]["dropped_sequences"] == 0, r["counts"]
        assert r["policy_step"] == 3 and len(r["samples"]) == len(mine)
        offset = 0
        for (p, q), s in zip(mine, r["samples"]):
            full = torch.cat([p, q])
            start = len(p) - 1  # context=1: the last prompt position, then the response
            with torch.no_grad():
                out = ref(input_ids=full[None], output_hidden_states=True)
            assert s["input_ids"].tolist() == full[start:].tolist(), f"rank {rank} captured another rank's data"
            want_aux = torch.cat([out.hidden_states[L][0, start:] for L in aux], -1)
            torch.testing.assert_close(s["aux"].float(), want_aux, atol=2e-2, rtol=2e-2)
            torch.testing.assert_close(s["final_hidden"].float(), out.hidden_states[-1][0, start:], atol=2e-2,
                                       rtol=2e-2)
            # the FSDP2 forward is the unsharded policy's, moved lm_head included
            torch.testing.assert_close(r["logits"][0, offset:offset + len(full)], out.logits[0], atol=1e-4, rtol=1e-4)
            offset += len(full)
        # the step budget is split over the data-parallel ranks
        b = r["budget_counts"]
        assert r["budget_bytes"] == int(0.05 * (1 << 20)) // TP
        assert 0 < b["kept_bytes"] <= r["budget_bytes"] and b["dropped_tokens"] > 0, b
        kept_ids = [s["input_ids"].tolist() for s in r["budget_samples"]]
        own = [torch.cat([p, q]).tolist() for p, q in mine]
        assert all(any(_is_sub(k, o) for o in own) for k in kept_ids), "budgeted capture kept another rank's data"
        # the full policy embedding and lm_head, on every rank
        assert torch.equal(r["embed"], ref.model.embed_tokens.weight.detach())
        assert torch.equal(r["head"], ref.lm_head.weight.detach())
    assert not ({tuple(s["input_ids"].tolist()) for s in res[0]["samples"]}
                & {tuple(s["input_ids"].tolist()) for s in res[1]["samples"]})


def _is_sub(small, big) -> bool:
    n = len(small)
    return any(big[i:i + n] == small for i in range(len(big) - n + 1))


# ----------------------------------------------------------------------------- 1. live reload
@pytest.fixture(scope="module")
def reloaded(slot, tb, prompts, pub, plain):
    """The shared TP=2 engine (booted on draft_path = v0) after a live reload of a published v1,
    through draft_reload.DraftReloader by method name (what the server does); every rank's reply,
    state and drafts for the "cmp" batch."""
    from verl_specrollout import compat
    from verl_specrollout.testing import tp_probe
    from verl_specrollout.vllm_adapter.draft_reload import DraftReloader

    llm, _ = _eagle3_engine(slot, tb, pub)
    boot = llm.collective_rpc(tp_probe.draft_state)
    shared_before = llm.collective_rpc(tp_probe.target_shared_state)
    replies = []

    def rpc(method, *args, **kwargs):
        out = llm.collective_rpc(method, *args, **kwargs)
        replies.append(out)
        return out

    _publish(tb, pub, 1, seed=1)
    rel = DraftReloader(rpc, pub, method=compat.WORKER_RELOAD_METHOD, bootstrap_dir=tb.eagle3_dir, initial_version=0)
    live = rel.maybe_reload()
    after = llm.collective_rpc(tp_probe.draft_state)
    shared_after = llm.collective_rpc(tp_probe.target_shared_state)
    llm.reset_prefix_cache()  # veRL resets it after every weight sync; cached draft KV is the old draft's
    llm.collective_rpc(tp_probe.start_recording)
    batch, n = _batches(prompts)["cmp"]
    out = _greedy(llm, batch, n)
    rec = llm.collective_rpc(tp_probe.recording)
    return {"boot": boot, "live": live, "replies": replies, "after": after, "out": out, "rec": rec,
            "shared_before": shared_before, "shared_after": shared_after,
            "ckpt": os.path.join(pub, "v000001")}


def test_tp2_live_reload_every_rank_holds_its_shard_of_the_new_version(reloaded, tb, plain):
    r = reloaded
    assert_ranks_hold(r["boot"], tb.eagle3_dir, None)  # booted on draft_path: each rank its shard of v0
    assert r["live"] == 1
    (replies,) = r["replies"]  # one collective call, one reply per rank
    assert len(replies) == TP, replies
    for rank, rep in enumerate(replies):
        assert rep["ok"] and rep["version"] == 1 and rep["error"] is None, (rank, rep)
        assert rep["loaded"] == replies[0]["loaded"] > 0
    assert_ranks_hold(r["after"], r["ckpt"], 1)
    # each rank's shard changed (v1 is not v0) and the ranks hold different slices of split layers
    for b, a in zip(_own_shards(r["boot"]), _own_shards(r["after"])):
        assert all(not torch.equal(b[n], a[n]) for n in a)
    own0, own1 = _own_shards(r["after"])
    assert not torch.equal(own0["model.layers.0.self_attn.o_proj.weight"], own1["model.layers.0.self_attn.o_proj.weight"])
    # the target's embed_tokens / lm_head shards the draft shares were not written on any rank
    for sb, sa in zip(r["shared_before"], r["shared_after"]):
        assert sb["params"].keys() == sa["params"].keys() and sb["params"]
        assert all(torch.equal(sb["params"][n], sa["params"][n]) for n in sb["params"])
    assert r["out"] == plain["cmp"], "greedy output after the reload differs from plain TP=2 decoding"
    d0, d1 = _by_request(r["rec"])
    assert d0 == d1 and d0, "the ranks proposed different drafts after the reload"


# ----------------------------------------------------------------------------- 2. sleep / restore
class _TP2Level2SleepEngine:
    """The slice of vLLM's AsyncLLM that veRL's server calls around sleep, over the in-process TP=2
    LLM; ``sleep(level=2)`` scrambles the draft's own weights on every rank (vLLM-CPU has no sleep
    mode; tests/integration/test_sleep_wake_draft.py emulates it the same way at TP=1)."""

    def __init__(self, llm):
        self.llm = llm
        self.calls = []
        self.scrambled = []

    async def sleep(self, level=1):
        from verl_specrollout.testing import tp_probe

        self.calls.append(("sleep", level))
        if level >= 2:
            n = self.llm.collective_rpc(tp_probe.scramble_draft, args=(len(self.calls),))
            assert len(n) == TP and all(x > 0 for x in n), n
            self.scrambled.append(n)

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
    server.engine = _TP2Level2SleepEngine(llm)
    server.node_rank, server.replica_rank, server.global_steps = 0, 0, 0
    server.rollout_mode = RolloutMode.HYBRID
    server.model_config = OmegaConf.create({"lora_rank": 0, "lora": {}})  # no LoRA: veRL picks level 2
    server.init_specrollout()
    return server


def test_tp2_sleep_level2_restore_every_rank_back_to_the_right_version(reloaded, slot, tb, pub, prompts, plain):
    from verl_specrollout.testing import tp_probe
    from verl_specrollout.vllm_adapter.spec_counters import read_counters

    llm, spec = _eagle3_engine(slot, tb, pub)
    server = _server(llm, spec)
    v1 = os.path.join(pub, "v000001")

    # Cycle 1: sleep / wake with nothing new published: every rank back on the live v1.
    asyncio.run(server.sleep())
    assert ("sleep", 2) in server.engine.calls, server.engine.calls  # veRL chose level 2
    slept = llm.collective_rpc(tp_probe.draft_state)
    for s, good in zip(_own_shards(slept), _own_shards(reloaded["after"])):
        assert all(not torch.equal(s[n], good[n]) for n in good), "the emulated sleep left draft weights intact"
    asyncio.run(server.wake_up())
    assert_ranks_hold(llm.collective_rpc(tp_probe.draft_state), v1, 1)

    # Cycle 2: the learner publishes v2 while the engine sleeps; the wake-up restore loads the newest.
    asyncio.run(server.sleep())
    v2 = _publish(tb, pub, 2, seed=2)
    asyncio.run(server.wake_up(tags=["weights"]))  # veRL's order: weights, weight sync, set_global_steps
    asyncio.run(server.set_global_steps(1))
    states = llm.collective_rpc(tp_probe.draft_state)
    assert_ranks_hold(states, v2, 2)
    assert server.draft.live_version() == 2
    assert [len(n) for n in server.engine.scrambled] == [TP, TP]
    # what each rank kept on the host before the first sleep (draft tensors no checkpoint restores)
    assert states[0]["kept"] == states[1]["kept"], [s["kept"] for s in states]
    metrics = asyncio.run(server.specrollout_step_metrics())
    assert metrics["draft_restores_after_sleep"] == 2 and metrics["draft_version_live"] == 2, metrics

    llm.reset_prefix_cache()
    c0 = read_counters(llm)
    batch, n = _batches(prompts)["plain_eq"]
    assert _greedy(llm, batch, n) == plain["plain_eq"]
    acc = (read_counters(llm) - c0).mean_acceptance_length
    assert acc > 1.5, f"restored v2 draft accepted {acc:.2f} per step at TP=2"


# ----------------------------------------------------------------------------- 3. K table and K=0 skip
def test_tp2_k_table_and_k0_skip_same_on_every_rank(slot, tb, pub, prompts, plain):
    from verl_specrollout import compat
    from verl_specrollout.testing import tp_probe
    from verl_specrollout.vllm_adapter.scheduler import SpecRolloutScheduler

    llm, _ = _eagle3_engine(slot, tb, pub)
    sched = compat.in_process_scheduler(llm)
    assert isinstance(sched, SpecRolloutScheduler) and sched.planner.zero_k_passes == 0
    table = [[1, 2, MAX_K], [3, 16, 0]]  # K=0 while 3+ requests run, MAX_K in the tail
    try:
        sched.set_policy("static", table)
        lookup = compat.get_dynamic_lookup(sched)
        llm.collective_rpc(tp_probe.start_recording)
        sched.record_timeline(True)
        batch, lens = _batches(prompts)["ktable"]
        out = _greedy(llm, batch, lens)
        timeline = sched.record_timeline(False)
        recs = llm.collective_rpc(tp_probe.recording)
    finally:
        sched.set_policy("static", TABLE)
    assert out == plain["ktable"], "greedy output with K=0 skips at TP=2 differs from plain TP=2"
    sched_steps = [(b, k) for _, b, k in timeline]
    assert {k for _, k in sched_steps} == {0, MAX_K}, sched_steps
    assert all(k == lookup[b] for b, k in sched_steps)
    for rec in recs:
        rank = rec["tp_rank"]
        assert rec["k0_skip_installed"], f"rank {rank}: our vLLM plugin did not install the K=0 skip"
        assert rec["config_skip_draft_at_k0"] and rec["skip_draft_at_k0"] is True, (rank, rec["skip_draft_at_k0"])
        assert rec["max_k"] == MAX_K
        # what this rank's scheduler output asked for, step by step, is the scheduler's table
        assert [(len(s["reqs"]), s["k"]) for s in rec["steps"]] == sched_steps, rank
        k0 = [p for p in rec["propose"] if p["k"] == 0]
        kk = [p for p in rec["propose"] if p["k"] > 0]
        assert k0 and kk, rec["propose"]
        assert all(p["draft_forwards"] == 0 and p["width"] == 0 for p in k0), f"rank {rank} ran the draft at K=0"
        assert all(p["k"] == MAX_K and p["draft_forwards"] >= 1 and p["width"] == MAX_K for p in kk), rank
    assert recs[0]["propose"] == recs[1]["propose"] and recs[0]["steps"] == recs[1]["steps"]
    assert recs[0]["draft_forwards"] == recs[1]["draft_forwards"]
    print(f"TP={TP} K table {table}: {len(sched_steps)} steps, K per step {[k for _, k in sched_steps]}, "
          f"draft forwards per rank {[r['draft_forwards'] for r in recs]}")
    d0, d1 = _by_request(recs)
    assert d0 == d1


# ----------------------------------------------------------------------------- 5. greedy == plain
def test_tp2_speculative_greedy_equals_plain_tp2(slot, tb, pub, prompts, plain):
    from verl_specrollout.testing import tp_probe
    from verl_specrollout.vllm_adapter.spec_counters import read_counters

    llm, _ = _eagle3_engine(slot, tb, pub)
    llm.reset_prefix_cache()
    llm.collective_rpc(tp_probe.start_recording)
    c0 = read_counters(llm)
    batch, n = _batches(prompts)["plain_eq"]
    out = _greedy(llm, batch, n)
    d = read_counters(llm) - c0
    bad = [i for i, (a, b) in enumerate(zip(out, plain["plain_eq"])) if a != b]
    assert len(out) == len(plain["plain_eq"]) and not bad, f"requests {bad} differ from plain TP=2"
    assert d.num_drafts > 0 and d.mean_acceptance_length > 1.5, d.to_dict()
    print(f"TP={TP} eagle3 greedy == plain over {len(out)} prompts; mean acceptance length "
          f"{d.mean_acceptance_length:.2f}")
    d0, d1 = _by_request(llm.collective_rpc(tp_probe.recording))
    assert d0 == d1 and d0


# ----------------------------------------------------------------------------- 1b. fresh engine on v1
def test_tp2_reload_equals_fresh_engine_on_that_version(reloaded, slot, tb, prompts):
    """A fresh TP=2 engine started on the published v1 holds, rank by rank, the shards the live reload
    put there, and drafts the same tokens at every step of the same batch."""
    from verl_specrollout.testing import tp_probe

    llm = slot.get("fresh_v1", lambda: _make(tb, _spec_dict(reloaded["ckpt"])))
    fresh = llm.collective_rpc(tp_probe.draft_state)
    assert_ranks_hold(fresh, reloaded["ckpt"], None)  # loaded at start-up, not by our reload
    for rank, (f, r) in enumerate(zip(_own_shards(fresh), _own_shards(reloaded["after"]))):
        assert f.keys() == r.keys() and all(torch.equal(f[n], r[n]) for n in f), f"rank {rank} differs"
    llm.collective_rpc(tp_probe.start_recording)
    batch, n = _batches(prompts)["cmp"]
    assert _greedy(llm, batch, n) == reloaded["out"]
    fresh_drafts = _by_request(llm.collective_rpc(tp_probe.recording))
    assert fresh_drafts == _by_request(reloaded["rec"]), "the reloaded draft drafts differently from a fresh one"


# ----------------------------------------------------------------------------- 4. group drafts
def test_tp2_group_drafts_identical_across_ranks(slot, tb, prompts, plain):
    from verl_specrollout.testing import tp_probe

    spec = _spec_dict(tb.eagle3_dir, method="eagle3+group", k=GROUP_K, table=[[1, 8, GROUP_K], [9, 16, 2]])
    llm = slot.get("eagle3+group", lambda: _make(tb, spec))
    batch, n = _batches(prompts)["group"]
    epochs, stats = [], []
    for _ in range(2):  # two GRPO epochs of the same prompts: the second drafts from the first's history
        llm.collective_rpc(tp_probe.start_recording)
        out = _greedy(llm, batch, n)
        recs = llm.collective_rpc(tp_probe.recording)
        stats.append(llm.collective_rpc(tp_probe.group_state))
        assert out == plain["group"], "eagle3+group greedy output at TP=2 differs from plain TP=2"
        d0, d1 = _by_request(recs)
        assert d0 == d1 and d0, "the ranks handed the scheduler different group drafts"
        assert recs[0]["propose"] == recs[1]["propose"], "the draft model ran with different K on the ranks"
        assert recs[0]["steps"] == recs[1]["steps"]
        epochs.append(d0)
    for st in stats:
        assert st[0]["stats"] and st[0]["stats"] == st[1]["stats"], "the ranks' group drafters diverged"
    # the second epoch drafted from the first one's responses (history), on both ranks alike
    src = stats[1][0]["stats"]["sources"]
    assert src["history"]["proposed"] > 0 and src["history"]["accepted"] > 0, src
    assert epochs[0] != epochs[1]
    print(f"TP={TP} eagle3+group sources after two epochs (each rank): {src}")
