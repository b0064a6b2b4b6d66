"""Best-of-N group drafting in the model runner (vllm_adapter/group_proposer.py): the bookkeeping
between steps, replayed in vLLM's two call orders without an engine.

The replay plays vLLM's synchronous V1 runner around ``propose_draft_token_ids``: the scheduler
output carries the drafts scheduled for verification, a deterministic "target" accepts each draft
up to its first wrong token and adds one token, and the runner's CPU bookkeeping (token_ids_cpu,
num_tokens_no_spec) runs after the proposer for model drafters (EAGLE / draft model: the step's
tokens are only in a -1 padded tensor) and before it for ngram (``group``). The real group index,
chooser, vLLM SchedulerOutput and RejectionSampler.parse_output are used; the runner and the
draft model are stand-ins (the engine path is tests/integration/test_group_draft_vllm.py).
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from verl_specrollout import compat
from verl_specrollout.config import SpecRolloutConfig
from verl_specrollout.vllm_adapter import group_proposer as gp

VOCAB = 64
MAX_LEN = 96
MODEL_TOKEN = 63  # what the stand-in draft model always proposes (the target never emits it)


def target_next(seq: list) -> int:
    """Deterministic target: the next token is a function of the last two tokens."""
    return (seq[-1] * 7 + seq[-2] * 3 + 1) % 60 + 2


def _scheduler_output(k: int, spec: dict, finished: set, num_tokens: dict):
    from vllm.v1.core.sched.output import CachedRequestData, SchedulerOutput

    return SchedulerOutput(
        scheduled_new_reqs=[], scheduled_cached_reqs=CachedRequestData.make_empty(),
        num_scheduled_tokens=num_tokens, total_num_scheduled_tokens=sum(num_tokens.values()),
        scheduled_spec_decode_tokens=spec, scheduled_encoder_inputs={}, num_common_prefix_blocks=[],
        finished_req_ids=set(finished), free_encoder_mm_hashes=[], num_spec_tokens_to_schedule=k)


class Replay:
    """A batch of requests stepped like vLLM's synchronous model runner steps them."""

    def __init__(self, method: str, *, k: int = 4, async_scheduling: bool = False,
                 draft_sample_method: str = "greedy", skip_draft_at_k0: bool = False, group=None):
        cfg = SpecRolloutConfig.from_dict({"enable": True, "method": method, "draft_path": "/ckpt", "max_k": k,
                                           "planner": {"skip_draft_at_k0": skip_draft_at_k0},
                                           "group": group or {}})
        self.cfg, self.k = cfg, k
        self.post_bookkeeping = cfg.base_method == "ngram"
        self.runner = SimpleNamespace(
            vllm_config=SimpleNamespace(additional_config={"specrollout": cfg.to_dict()}),
            speculative_config=SimpleNamespace(method=cfg.base_method, draft_sample_method=draft_sample_method),
            use_async_scheduling=async_scheduling,
            input_batch=SimpleNamespace(req_ids=[], num_prompt_tokens=np.zeros(64, np.int32),
                                        token_ids_cpu=np.zeros((64, MAX_LEN), np.int32),
                                        num_tokens_no_spec=np.zeros(64, np.int32), vocab_size=VOCAB),
            discard_request_mask=SimpleNamespace(np=np.zeros(64, bool)),
            drafter=SimpleNamespace())
        self.model_calls: list = []  # K the draft model was run with, per call
        self.k0_skip_during_calls: list = []
        self.reqs: dict = {}  # req_id -> token list (prompt + output)
        self.prompt_len: dict = {}
        self.max_out: dict = {}
        self.drafts: dict = {}  # req_id -> draft for the next step
        self.finished: set = set()
        self._newly_finished: set = set()  # reach the runner in the next step's scheduler output
        self.accepted = self.drafted = 0

    # the draft model: always MODEL_TOKEN (never accepted), K from the scheduler output it is given
    def original(self, runner, so, sampled, *args, **kwargs):
        from verl_specrollout.vllm_adapter import k0_skip

        k = compat.scheduled_k(so)
        self.model_calls.append(k)
        self.k0_skip_during_calls.append(getattr(runner.drafter, k0_skip._FLAG, None))
        if self.cfg.base_method == "ngram":
            return [[] for _ in runner.input_batch.req_ids]
        return torch.full((len(runner.input_batch.req_ids), k), MODEL_TOKEN, dtype=torch.int64)

    def add(self, req_id: str, prompt: list, max_out: int):
        self.reqs[req_id] = list(prompt)
        self.prompt_len[req_id] = len(prompt)
        self.max_out[req_id] = max_out

    def _write_rows(self, ids, upto):
        b = self.runner.input_batch
        b.req_ids = list(ids)
        for i, r in enumerate(ids):
            seq = self.reqs[r][:upto[r]]
            b.token_ids_cpu[i, :len(seq)] = seq
            b.num_tokens_no_spec[i] = len(seq)
            b.num_prompt_tokens[i] = self.prompt_len[r]

    def step(self, k=None, discard=(), skip_proposer=False) -> dict:
        """One engine step over every live request; returns the drafts the proposer produced."""
        k = self.k if k is None else k
        ids = [r for r in self.reqs if r not in self.finished]
        spec = {r: list(self.drafts[r]) for r in ids if self.drafts.get(r)}
        sampled = {}
        for r in ids:
            if r in discard:
                sampled[r] = []
                continue
            seq, out = self.reqs[r], []
            for d in spec.get(r, []) + [None]:
                t = target_next(seq + out)
                out.append(t)
                if d != t:
                    break
            self.drafted += len(spec.get(r, []))
            self.accepted += len(out) - 1
            sampled[r] = out
        so = _scheduler_output(k, spec, self._newly_finished, {r: 1 + len(spec.get(r, [])) for r in ids})
        self._newly_finished = set()
        before = {r: len(self.reqs[r]) for r in ids}
        if self.post_bookkeeping:  # ngram: vLLM's bookkeeping first, the proposer gets lists
            for r in ids:
                self.reqs[r] += sampled[r]
            self._write_rows(ids, {r: len(self.reqs[r]) for r in ids})
            arg = [sampled[r] for r in ids]
        else:  # model drafters: the proposer first, with the -1 padded sampler output
            self._write_rows(ids, before)
            width = 1 + max((len(v) for v in spec.values()), default=0)
            t = torch.full((len(ids), width), -1, dtype=torch.int64)
            for i, r in enumerate(ids):
                t[i, :len(sampled[r])] = torch.tensor(sampled[r]) if sampled[r] else t[i, :0]
            self.runner.discard_request_mask.np[:] = False
            for i, r in enumerate(ids):
                self.runner.discard_request_mask.np[i] = r in discard
            arg = t
        drafter = gp._group_drafter(self.runner)
        if drafter is not None:  # what the execute_model wrapper does before the model runs
            drafter.begin_step(so.finished_req_ids)
        if drafter is not None and skip_proposer:  # vLLM does not call the proposer this step
            self._write_rows(ids, {r: len(self.reqs[r]) + (0 if self.post_bookkeeping else len(sampled[r]))
                                   for r in ids})
            out = [[0] * k for _ in ids]  # vLLM's zeroed drafts
        elif drafter is None:
            out = self.original(self.runner, so, arg)
        else:
            out = gp.propose_with_group(self.runner, drafter, self.original, so, arg, (), {})
        rows = out.tolist() if torch.is_tensor(out) else out
        if not self.post_bookkeeping:
            for r in ids:
                self.reqs[r] += sampled[r]
        self.drafts = {r: rows[i] for i, r in enumerate(ids)}
        for r in ids:
            if len(self.reqs[r]) - self.prompt_len[r] >= self.max_out[r]:
                self.finished.add(r)
                self._newly_finished.add(r)
        return self.drafts

    def run(self, **kw):
        while any(r not in self.finished for r in self.reqs):
            self.step(**kw)

    def stats(self) -> dict:
        return gp.worker_stats(SimpleNamespace(model_runner=self.runner))


PROMPTS = [[1, 5, 9, 13, 17], [1, 6, 10, 14, 18, 22]]


def _grpo(replay: Replay, g: int = 4, epoch: int = 0, max_out: int = 24):
    for p, prompt in enumerate(PROMPTS):
        for j in range(g):
            replay.add(f"e{epoch}-p{p}-s{j}", prompt, max_out)
    replay.run()


@pytest.mark.parametrize("method", ["eagle3+group", "group"])
def test_second_epoch_drafts_from_history_and_is_credited(method):
    """Epoch 2 of the same prompts: drafts come from epoch 1's responses and are all accepted;
    every verified draft token is credited to the source that drafted it."""
    r = Replay(method)
    _grpo(r, epoch=0)
    s1 = r.stats()
    acc0, drafted0 = r.accepted, r.drafted
    _grpo(r, epoch=1)
    s2 = r.stats()
    hist = s2["sources"]["history"]["accepted"] - s1["sources"]["history"]["accepted"]
    assert hist > 0 and s2["sources"]["history"]["chosen"] > s1["sources"]["history"]["chosen"]
    # Each epoch-2 response is epoch 1's (deterministic target): history drafts are all accepted.
    epoch2_rate = (r.accepted - acc0) / max(1, r.drafted - drafted0)
    assert epoch2_rate > 0.9, epoch2_rate
    # What the replay verified is exactly what the drafter credited, source by source.
    total = sum(c["proposed"] for c in s2["sources"].values())
    assert total == r.drafted
    assert sum(c["accepted"] for c in s2["sources"].values()) == r.accepted
    # The stand-in model proposes a token the target never emits: never accepted.
    assert s2["sources"]["model"]["accepted"] == 0
    if method == "group":
        assert s2["sources"]["model"]["chosen"] == 0 and not r.model_calls  # no draft model, never called


def test_model_drafter_runs_at_the_k_requests_chose_it_for():
    r = Replay("eagle3+group")
    _grpo(r, epoch=0)
    assert r.model_calls and set(r.model_calls) <= {0, 4}
    assert 4 in r.model_calls  # first epoch: nothing in the index yet, the model drafts at K=4
    n = len(r.model_calls)
    _grpo(r, epoch=1)
    # Second epoch: history wins for every request once its model acceptance (0) is known, and
    # the draft model still runs once per step, at K=0 (its KV cache stays in sync).
    assert r.model_calls[-1] == 0 and len(r.model_calls) > n


def test_k0_skip_is_bypassed_only_when_the_step_k_is_not_zero():
    from verl_specrollout.vllm_adapter import k0_skip

    r = Replay("eagle3+group", skip_draft_at_k0=True)
    k0_skip.set_enabled(r.runner.drafter, True)
    _grpo(r, epoch=0)
    _grpo(r, epoch=1)
    calls = list(zip(r.model_calls, r.k0_skip_during_calls))
    assert (0, False) in calls  # model K=0 inside a K=4 step: the draft pass runs
    assert getattr(r.runner.drafter, k0_skip._FLAG) is True  # restored
    r.add("late", PROMPTS[0], 3)
    r.step(k=0)  # the planner's K=0: vLLM's own path, the skip stays on
    assert r.model_calls[-1] == 0 and r.k0_skip_during_calls[-1] is True


def test_both_call_orders_index_the_same_tokens():
    """Post-bookkeeping (ngram) and pre-bookkeeping (-1 padded tensor) feeding agree token for token."""
    reps = {m: Replay(m) for m in ("group", "eagle3+group")}
    for rep in reps.values():
        _grpo(rep, epoch=0)
    a, b = (rep.stats()["index"] for rep in reps.values())
    assert a["indexed_tokens"] == b["indexed_tokens"] and a["history_responses"] == b["history_responses"]
    ga, gb = (rep.runner.__dict__[gp.STATE_ATTR] for rep in reps.values())
    key = ga.index.group_key(PROMPTS[0])
    ha, hb = ga.index.history_responses(key), gb.index.history_responses(key)
    assert ha and sorted(ha) == sorted(hb)
    assert all(len(x) >= 24 for x in ha)


def test_a_step_the_proposer_missed_is_caught_up_and_not_credited():
    """vLLM skips the proposer when the input does not fit the drafter: bookkeeping still runs and
    the next step verifies vLLM's zeroed drafts, which must not be credited to our last draft."""
    r = Replay("eagle3+group")
    r.add("a", PROMPTS[0], 30)
    r.step()
    r.step()
    def settled():
        return {s: (c["proposed"], c["accepted"]) for s, c in r.stats()["sources"].items()}

    before = settled()
    r.step(skip_proposer=True)
    r.step()
    g = r.runner.__dict__[gp.STATE_ATTR]
    assert g._fed["a"] == len(r.reqs["a"])
    assert r.stats()["index"]["indexed_tokens"] == len(r.reqs["a"])
    assert settled() == before  # vLLM's zeroed drafts were verified: nothing credited to our draft


def test_prefill_chunks_get_no_draft_and_no_tokens():
    r = Replay("eagle3+group")
    r.add("a", PROMPTS[0], 10)
    r.add("b", PROMPTS[1], 10)
    drafts = r.step(discard={"b"})
    assert drafts["a"] and drafts["b"] == []
    g = r.runner.__dict__[gp.STATE_ATTR]
    assert g._fed["b"] == len(PROMPTS[1])  # the prompt only: the discarded sample is not indexed


def test_trimmed_drafts_are_credited_as_verified():
    """The scheduler may verify fewer draft tokens than proposed (structured output, max_model_len,
    verify budget): only the verified ones count."""
    r = Replay("group")
    _grpo(r, epoch=0)
    r.add("x", PROMPTS[0], 20)
    for _ in range(3):
        r.step()
    def proposed():
        return sum(c["proposed"] for c in r.stats()["sources"].values())

    before = proposed()
    d = r.drafts["x"]
    assert len(d) >= 2
    r.drafts["x"] = d[:1]  # the scheduler kept one token
    r.step()
    assert proposed() - before == 1


def test_finished_requests_become_history_and_leave_the_chooser():
    r = Replay("group", group={"history_depth": 2})
    _grpo(r, epoch=0, g=3)
    r.add("flush", [9, 9, 9], 1)  # one more step delivers the last finished ids
    r.run()
    g = r.runner.__dict__[gp.STATE_ATTR]
    key = g.index.group_key(PROMPTS[0])
    assert len(g.index.history_responses(key)) == 2  # history_depth
    assert not [x for x in g._fed if x.startswith("e0-")] and len(g.chooser) <= 1


def test_engines_without_group_drafting_are_untouched():
    r = Replay("eagle3+group")
    r.runner.vllm_config.additional_config = {"specrollout": SpecRolloutConfig.from_dict(
        {"enable": True, "method": "eagle3", "draft_path": "/x"}).to_dict()}
    r.add("a", PROMPTS[0], 8)
    r.run()
    assert r.runner.__dict__[gp.STATE_ATTR] is False
    assert set(r.model_calls) == {4}  # vLLM's K every step, vLLM's drafts


def test_async_scheduling_falls_back_to_the_base_method_with_one_log_line(caplog):
    gp._warned.discard("async")
    with caplog.at_level(logging.WARNING, logger="vllm.specrollout_group"):
        r = Replay("eagle3+group", async_scheduling=True)
        r.add("a", PROMPTS[0], 8)
        r.run()
    assert r.runner.__dict__[gp.STATE_ATTR] is False and set(r.model_calls) == {4}
    assert sum("asynchronous scheduling" in rec.getMessage() for rec in caplog.records) == 1


def test_probabilistic_draft_sampling_is_refused():
    r = Replay("eagle3+group", draft_sample_method="probabilistic")
    r.add("a", PROMPTS[0], 8)
    with pytest.raises(ValueError, match="draft_sample_method='probabilistic'"):
        r.step()


def test_install_wraps_the_runner_class_once_and_passes_through(monkeypatch):
    calls = []

    class Runner:
        def propose_draft_token_ids(self, scheduler_output, sampled_token_ids, *args):
            calls.append(("propose", scheduler_output, sampled_token_ids, args))
            return "vllm's drafts"

        def execute_model(self, scheduler_output, intermediate_tensors=None):
            calls.append(("execute", scheduler_output))
            return "vllm's output"

    monkeypatch.setattr(gp, "_state", {"installed": False})
    monkeypatch.setattr(compat, "resolve", lambda name: Runner)
    assert gp.install() and gp.install()
    assert Runner.propose_draft_token_ids.__wrapped__.__name__ == "propose_draft_token_ids"
    assert not hasattr(Runner.propose_draft_token_ids.__wrapped__, "__wrapped__")  # wrapped once
    runner = Runner()
    runner.vllm_config = SimpleNamespace(additional_config={})
    assert runner.propose_draft_token_ids("so", "sampled", 1, 2) == "vllm's drafts"
    assert runner.execute_model("so") == "vllm's output"
    assert calls == [("propose", "so", "sampled", (1, 2)), ("execute", "so")]


def test_group_metrics_sum_servers_and_share_request_steps():
    from verl_specrollout.metrics import group_metrics, step_metrics

    one = {"sources": {"model": {"proposed": 40, "accepted": 20, "chosen": 10},
                       "siblings": {"proposed": 6, "accepted": 3, "chosen": 3},
                       "history": {"proposed": 10, "accepted": 9, "chosen": 5},
                       "prompt": {"proposed": 0, "accepted": 0, "chosen": 0}},
           "request_steps": 20, "no_draft": 2, "index": {"indexed_tokens": 100}}
    m = group_metrics([{"group": one}, {"group": one}, {}])
    assert m["specrollout/source/model/proposed"] == 80 and m["specrollout/source/history/accepted"] == 18
    assert m["specrollout/source/model/share"] == pytest.approx(0.5)
    assert m["specrollout/source/siblings/share"] == pytest.approx(0.15)
    assert m["specrollout/source/none/share"] == pytest.approx(0.1)
    assert m["specrollout/group/indexed_tokens"] == 200
    assert group_metrics([{}, {"vllm": {}}]) == {}
    assert "specrollout/source/history/share" in step_metrics([{"group": one}])


def test_server_turns_cumulative_counts_into_deltas():
    from verl_specrollout.metrics import counts_delta as _counts_delta

    a = {"sources": {"model": {"proposed": 4, "accepted": 2}}, "request_steps": 5}
    b = {"sources": {"model": {"proposed": 10, "accepted": 3}, "history": {"proposed": 2}}, "request_steps": 9}
    assert _counts_delta(b, a) == {"sources": {"model": {"proposed": 6, "accepted": 1}, "history": {"proposed": 2}},
                                   "request_steps": 4}


class OracleReplay(Replay):
    """A draft model right at its first token and wrong at its second (62: never emitted), so it is
    worth running for a request without a suffix and differs from an exact history draft."""

    def original(self, runner, so, sampled, *args, **kwargs):
        k = compat.scheduled_k(so)
        self.model_calls.append(k)
        rows = []
        for i, r in enumerate(runner.input_batch.req_ids):
            seq = self.reqs[r] + [t for t in sampled[i].tolist() if t >= 0]  # pre-bookkeeping order
            rows.append(([target_next(seq), 62] + [MODEL_TOKEN] * k)[:k])
        self.model_rows.append(dict(zip(runner.input_batch.req_ids, rows)))
        return torch.tensor(rows, dtype=torch.int64).reshape(len(rows), k)


def test_counterfactual_gets_the_model_draft_of_a_suffix_request_and_the_next_emitted_tokens():
    r = OracleReplay("eagle3+group")
    r.model_rows = []
    _grpo(r, epoch=0)
    g = gp._group_drafter(r.runner)
    seen = []
    real = g.chooser.observe_counterfactual
    g.chooser.observe_counterfactual = lambda rid, d, e: (seen.append((rid, list(d), list(e))), real(rid, d, e))
    # epoch 2 drafts from history; a fresh prompt (no suffix) keeps the draft model running
    for p, prompt in enumerate(PROMPTS):
        for j in range(4):
            r.add(f"e1-p{p}-s{j}", prompt, 24)
    r.add("fresh", [40, 44, 48, 52, 56], 24)
    compared, prev, model_chosen = [], {}, set()
    for _ in range(40):
        if all(x in r.finished for x in r.reqs):
            break
        n_seen, n_rows = len(seen), len(r.model_rows)
        lens = {x: len(r.reqs[x]) for x in r.reqs}
        r.step()
        got = {rid: (d, e) for rid, d, e in seen[n_seen:]}
        for x, row in prev.items():  # the model's draft of last step, the tokens this step emitted
            assert got.get(x) == (row, r.reqs[x][lens[x]:]), x
            compared.append(x)
        assert not set(got) & model_chosen  # a request the model drafted for is settled for real
        prev, model_chosen = {}, set()
        if len(r.model_rows) > n_rows:
            model = r.model_rows[-1]
            live = [x for x in r.drafts if x not in r.finished]
            model_chosen = {x for x in live if r.drafts[x] == model[x]}
            prev = {x: model[x] for x in live if x.startswith("e1-") and len(r.drafts[x]) > 1
                    and x not in model_chosen}
    assert compared  # suffix-drafting requests were compared with the model's draft of their step
    # exact history drafts: the model's first token is right, its second (62) wrong -> 1 of 2 trials
    assert all(d[:2] == e[:1] + [62] and len(e) >= 2 for x, d, e in seen if x in compared)
    assert g.chooser.offered_alpha(compared[0]) < 0.9


def test_first_tokens_that_differ_switch_the_draft_and_its_credit():
    from verl_specrollout.group_draft import GroupSuffixIndex, SourceChooser, SuffixDraft

    g = gp.GroupDrafter(GroupSuffixIndex(), SourceChooser(), has_model=True)
    choices = []
    for rid, probs, first in (("a", [0.7, 1, 1, 1], 5), ("b", [0.7, 1, 1, 1], 9), ("c", [1.0] * 4, 5)):
        sfx = SuffixDraft([first, 6, 7, 8], "siblings", 4, probs)
        src, n = g.chooser.choose(rid, 4, sfx, model_alpha=0.8)  # the suffix (2.8 or 4 vs the model's 2.36)
        assert src == "siblings"
        choices.append(gp.Choice(src, n, list(sfx.tokens[:n]), req_id=rid, suffix=sfx))
        g.counts[src]["chosen"] += 1
        g._pending[rid] = (src, n, g._step)
    out = g.assemble(choices, [[9, 1, 2, 3]] * 3)
    # a: first tokens differ and the suffix's 0.7 is not worth the model's draft -> the model's
    # b: they agree -> the suffix stands; c: they differ but the suffix is certain -> it stands
    assert out == [[9, 1, 2, 3], [9, 6, 7, 8], [5, 6, 7, 8]]
    assert g._pending["a"][:2] == (gp.MODEL, 4) and g._pending["b"][:2] == ("siblings", 4)
    assert g.counts[gp.MODEL]["chosen"] == 1 and g.counts["siblings"]["chosen"] == 2
    assert set(g._counterfactual) == {"b", "c"}  # the model's draft kept where it is not used
