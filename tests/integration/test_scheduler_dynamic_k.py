"""The live batch-size -> K table of SpecRolloutScheduler really changes what vLLM drafts.

Runs a real vLLM CPU engine in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0) on a tiny random
Llama with ngram speculation (no trained draft needed to check K: ngram proposes whenever
the context repeats, and the prompts are repetitive). K is observed through vLLM's own
Prometheus counters (vllm:spec_decode_num_drafts / vllm:spec_decode_num_draft_tokens).

Every test runs twice: on an engine whose speculative_config carries no K table
(engine.graph_plan=keep_user_mode: our scheduler installs the lookup itself, and its stats file is
named in the environment, not in vLLM's config) and on one that carries vLLM's
num_speculative_tokens_per_batch_size (engine.graph_plan=piecewise, what auto picks).
"""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.integration

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

MAX_K = 3
N_PROMPTS = 8
MAX_TOKENS = 24


def _tiny_llama(path: str) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).to(torch.float32)
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module", params=["scheduler-lookup", "vllm-table"])
def engine(request, tmp_path_factory):
    pytest.importorskip("vllm")
    from vllm import LLM

    from verl_specrollout.config import SpecRolloutConfig
    from verl_specrollout import compat
    from verl_specrollout.vllm_adapter.engine_kwargs import apply_channel_env

    model_dir = _tiny_llama(str(tmp_path_factory.mktemp("tiny_llama")))
    cfg = SpecRolloutConfig(enable=True, method="ngram", max_k=MAX_K, prompt_lookup_min=1, prompt_lookup_max=3)
    cfg.planner.mode = "static"
    cfg.planner.max_batch = 16
    spec = {"method": "ngram", "num_speculative_tokens": MAX_K, "prompt_lookup_min": 1, "prompt_lookup_max": 3}
    stats_path = None
    if request.param == "vllm-table":
        spec[compat.VLLM_SPEC_DYNAMIC_TABLE_ATTR] = [[1, 16, MAX_K]]
    else:
        stats_path = str(tmp_path_factory.mktemp("stats") / "replica0_node0_1234.json")
    apply_channel_env(cfg, stats_path=stats_path)  # the in-process engine core reads it at start
    try:
        llm = LLM(
            model=model_dir,
            skip_tokenizer_init=True,
            dtype="float32",
            enforce_eager=True,
            max_model_len=256,
            max_num_seqs=16,
            max_num_batched_tokens=1024,
            kv_cache_memory_bytes=64 * 1024 * 1024,
            disable_log_stats=False,
            seed=0,
            scheduler_cls="verl_specrollout.vllm_adapter.scheduler.SpecRolloutScheduler",
            speculative_config=spec,
            additional_config={"specrollout": cfg.engine_dict()},
        )
    finally:
        apply_channel_env(SpecRolloutConfig())  # clears both channels
    sched = compat.in_process_scheduler(llm)
    sched.sr_test_variant, sched.sr_test_stats_path = request.param, stats_path
    yield llm, sched
    del llm


def _counters(llm) -> dict:
    out = {}
    for m in llm.get_metrics():
        if m.name in ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens"):
            out[m.name] = out.get(m.name, 0) + int(m.value)
    return out


def _generate(llm, staggered=False):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    # Repetitive prompts: ngram finds the suffix earlier in the context and proposes its continuation.
    prompts = [TokensPrompt(prompt_token_ids=[3 + (i % 5)] + [10 + i, 11 + i, 12 + i, 13 + i] * 8) for i in range(N_PROMPTS)]
    if staggered:  # requests finish one after another: live batch size falls 8 -> 1
        sp = [SamplingParams(temperature=0.0, max_tokens=6 * (i + 1), ignore_eos=True, detokenize=False) for i in range(N_PROMPTS)]
    else:
        sp = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, detokenize=False)
    before = _counters(llm)
    outs = llm.generate(prompts, sp, use_tqdm=False)
    after = _counters(llm)
    assert all(len(o.outputs[0].token_ids) == (6 * (i + 1) if staggered else MAX_TOKENS) for i, o in enumerate(outs))
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens")}
    return delta["vllm:spec_decode_num_drafts"], delta["vllm:spec_decode_num_draft_tokens"], outs


def test_scheduler_is_ours_and_table_installed(engine):
    from verl_specrollout import compat
    from verl_specrollout.vllm_adapter.scheduler import SpecRolloutScheduler

    llm, sched = engine
    assert isinstance(sched, SpecRolloutScheduler)
    assert sched.planner is not None and sched.planner.max_k == MAX_K
    lookup = compat.get_dynamic_lookup(sched)
    assert lookup is not None and len(lookup) == 17 and set(lookup[1:]) == {MAX_K}
    table = getattr(sched.vllm_config.speculative_config, compat.VLLM_SPEC_DYNAMIC_TABLE_ATTR)
    assert (table is None) == (sched.sr_test_variant == "scheduler-lookup"), table
    # Nothing run-specific in vLLM's config: the stats file came through the environment.
    assert sched.vllm_config.additional_config["specrollout"]["planner"]["stats_path"] is None
    assert sched._sr_stats_path == sched.sr_test_stats_path


def test_live_table_k0_drafts_nothing_then_k3_drafts(engine):
    llm, sched = engine
    rows = sched.set_policy("off")
    assert rows == [[1, 16, 0]]
    drafts, draft_tokens, outs_off = _generate(llm)
    assert drafts == 0 and draft_tokens == 0, (drafts, draft_tokens)

    sched.set_policy("static", [[1, 16, MAX_K]])
    drafts, draft_tokens, outs_on = _generate(llm)
    assert drafts > 0, "K=3 table: ngram should have proposed drafts on repetitive prompts"
    assert draft_tokens <= MAX_K * drafts
    # ngram proposes the full K whenever it matches; on these prompts most drafts are full length
    assert draft_tokens / drafts > 2.0, (drafts, draft_tokens)
    # greedy speculative decoding is lossless: same tokens with and without speculation
    assert [o.outputs[0].token_ids for o in outs_off] == [o.outputs[0].token_ids for o in outs_on]


def test_live_table_k1_caps_draft_length(engine):
    llm, sched = engine
    sched.set_policy("static", [[1, 16, 1]])
    drafts, draft_tokens, _ = _generate(llm)
    assert drafts > 0 and draft_tokens == drafts, (drafts, draft_tokens)


def test_table_by_batch_size(engine):
    """K follows live concurrency: K=0 while more than 4 requests run, K=3 at <= 4."""
    llm, sched = engine
    sched.set_policy("static", [[1, 4, MAX_K], [5, 16, 0]])
    sched.planner.k_hist.clear()
    assert sched.record_timeline(True) is None  # off until asked
    drafts, draft_tokens, _ = _generate(llm, staggered=True)
    steps = sched.record_timeline(False)
    hist = sched.planner.k_hist  # keys: batch size; values: {K vLLM scheduled: steps}
    # The recorded timeline is the same story step by step: time ordered, B falling 8 -> 1.
    assert steps and sum(hist[b][k] for b in hist for k in hist[b]) == len(steps)
    assert [t for t, _, _ in steps] == sorted(t for t, _, _ in steps)
    assert steps[0][1] == N_PROMPTS and steps[-1][1] == 1
    assert all(k == (MAX_K if b <= 4 else 0) for _, b, k in steps), steps
    assert sched.record_timeline(False) is None
    assert any(b > 4 for b in hist) and any(b <= 4 for b in hist), hist
    assert all(k == 0 for b, h in hist.items() if b > 4 for k in h), hist
    assert all(k == MAX_K for b, h in hist.items() if b <= 4 for k in h), hist
    assert drafts > 0 and draft_tokens <= MAX_K * drafts


def test_verify_budget_trims_per_request_drafts(engine):
    """A cap of 2 verified draft tokens per step, enforced by trimming request.spec_token_ids."""
    llm, sched = engine
    sched.set_policy("static", [[1, 16, MAX_K]])
    _, _, ref = _generate(llm)
    sched.set_verify_budget(2)
    try:
        steps0 = sched.planner.steps
        drafts, draft_tokens, outs = _generate(llm)
        steps = sched.planner.steps - steps0
    finally:
        sched.set_verify_budget(None)
    assert 0 < draft_tokens <= 2 * steps, (draft_tokens, steps)
    assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in ref]
    # without the cap, 8 concurrent requests verify far more than 2 draft tokens per step
    steps0 = sched.planner.steps
    _, draft_tokens_free, _ = _generate(llm)
    assert draft_tokens_free > 2 * (sched.planner.steps - steps0)


def test_adaptive_planner_observes_and_replans(engine):
    llm, sched = engine
    sched.set_policy("adaptive")
    p = sched.planner
    p.replan_interval = 4
    steps0, replans0 = p.steps, p.replans
    for _ in range(3):
        _generate(llm)
    assert p.steps > steps0 and p.replans > replans0
    assert len(p.cost) > 0
    st = sched.specrollout_stats()
    assert st["num_drafts"] > 0 and 0.0 <= st["acceptance_rate"] <= 1.0
    from verl_specrollout.metrics import planner_metrics

    m = planner_metrics(st)
    assert m["specrollout/num_drafts"] > 0 and all(k.startswith("specrollout/") for k in m)
    # the installed lookup always is what the planner reports
    from verl_specrollout import compat
    from verl_specrollout.planner import KTable

    assert compat.get_dynamic_lookup(sched) == KTable.from_rows(p.rows(), 16, MAX_K).lookup()


def test_stats_reach_the_file_named_in_the_environment(engine):
    llm, sched = engine
    if sched.sr_test_stats_path is None:
        pytest.skip("this engine was given no stats file")
    import json

    sched.set_policy("static", [[1, 4, MAX_K], [5, 16, 1]])
    _generate(llm)  # the engine drains at the end: the scheduler writes its stats
    with open(sched.sr_test_stats_path) as f:
        stats = json.load(f)
    assert stats["table"] == [[1, 4, MAX_K], [5, 16, 1]]
