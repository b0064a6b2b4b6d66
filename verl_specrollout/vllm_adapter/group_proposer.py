"""Best-of-N group drafting inside vLLM's V1 model runner (``method`` ``eagle3+group``,
``draft_model+group``, ``group``).

In GRPO every prompt is sampled G times and comes back epoch after epoch. A request's siblings
(the other samples of its prompt, in flight or finished) and earlier responses to the same prompt
often continue the request's current context the way the target will: free drafts. Per engine step
and running request this module

1. feeds the request's new tokens to a group suffix index (group_draft/index.py), and finished
   requests' responses to its history;
2. settles the request's previous draft: ``accepted = valid sampled tokens - 1`` of the draft
   tokens verified (``scheduled_spec_decode_tokens``), credited to the source that drafted them
   (group_draft/choice.py keeps the running estimate per source and request);
3. asks the index for its best suffix draft and the chooser for a source at the step's K
   (``num_spec_tokens_to_schedule``, the planner's choice): the draft model (K tokens), a suffix
   source (n <= K tokens) or nothing;
4. runs the draft model (EAGLE-3 / draft LM) with the largest K any request chose it for -- K = 0
   when none did: its first pass still runs over every token the target processed this step, so
   the draft's KV cache stays in sync whatever drafted the previous step (the planner's own K = 0
   skip, k0_skip.py, is bypassed for such steps, since K is not 0 for the step);
5. where the model drafted for the whole batch, checks each request whose suffix draft was offered
   against the model's draft (first tokens that differ: the chooser reconsiders, choice.py), and
   keeps the model's draft of each request that drafts otherwise: at the next step it is compared
   with the tokens the request emitted, the chooser's counterfactual evidence of how the model
   would have done on that step;
6. returns one draft list per request, ragged (vLLM's ngram method returns the same shape).

How it is installed: vLLM's ``GPUModelRunner.propose_draft_token_ids`` and ``execute_model``
are wrapped at class level, once per process, by the vLLM plugin (engine_patches.py); the CPU runner
subclasses that class. A runner reads its engine's ``additional_config`` once: without group
drafting both wrappers call vLLM's method and nothing else. vLLM's ``custom_class`` proposer
method cannot do this: it sees neither request ids nor prompt lengths and replaces the model
drafter instead of joining it. ``execute_model`` is wrapped only to see every step's
``finished_req_ids`` and to count steps: a step that schedules no tokens, or whose input does not
fit the drafter, never reaches the proposer.

Where this step's tokens are. vLLM drafts with ngram (``group``) after its CPU bookkeeping: the
step's tokens are in ``input_batch.token_ids_cpu`` and ``sampled_token_ids`` is a list. EAGLE and
draft-model drafters run before it (padded drafter batch, vLLM's default): the step's tokens are
only in ``sampled_token_ids``, a [B, K+1] tensor with -1 in rejected slots, read with vLLM's own
``RejectionSampler.parse_output`` (rows of prefill chunks are dropped, as vLLM drops them). Each
request's tokens already indexed are counted, so a step the proposer did not see is caught up from
``token_ids_cpu`` at the next one.

What vLLM does with ragged drafts (read in vLLM 0.31): the synchronous runner keeps a list as is
(``_copy_draft_token_ids_to_cpu`` only records the request ids, ``take_draft_token_ids`` hands the
lists to the scheduler), the scheduler stores each list as the request's ``spec_token_ids`` and
schedules exactly its length, and the next step's spec-decode metadata carries per-request draft
counts; the EAGLE drafter's padded input preparation (``prepare_inputs_padded``) reads them from
``cu_num_draft_tokens``, as it does for drafts the scheduler shortened (structured output,
max_model_len).

Lossless. A draft that is a function of tokens sampled before this step -- the request's own,
its siblings', earlier rollouts' -- is, given the past, a fixed token sequence; vLLM's rejection
sampler then accepts draft token d with probability min(1, p(d)/q(d)) (q one-hot at d: p(d)) and
otherwise samples from the normalised residual max(0, p - q), which makes the emitted token an
exact sample of p whatever d was. The step's random draws are fresh (independent of the past that
chose d), so every request's tokens are exact target samples given its context, and requests stay
independent of each other: the joint law of the G samples is the plain one, not only each
marginal. At T = 0 the emitted tokens are the target's argmax whatever was drafted.
``draft_sample_method="probabilistic"`` (the draft's q enters the ratio test) is refused with an
error: a suffix draft has no q of the draft model, and mixing rows would need one-hot q rows.
Our config never asks vLLM for it.

GPU clusters.
* Asynchronous scheduling (vLLM 0.31's default for EAGLE / draft-model speculation) keeps the
  step's sampled tokens on the GPU while the next step is scheduled and drafts placeholders of
  fixed length. The index would lag one step behind the tokens it must continue, and every
  request would need K drafted tokens. build_engine_kwargs therefore turns async scheduling off
  for group methods; an engine that runs it anyway drafts with the base method alone (logged once).
* TP: every TP rank runs this wrapper on the same scheduler output and the same sampled tokens
  (vLLM broadcasts both), so the indexes, the choices -- the chooser is deterministic -- and hence
  the draft model's K agree on every rank; the draft forward's collectives match.
* CUDA graphs: the draft model keeps its graphs (its K changes per step as with dynamic K).
  Verification of ragged drafts is a mixed batch for vLLM, so the target runs its piecewise graph
  rather than the full uniform-decode graph on steps where requests draft different lengths.
* Sleep mode: the index lives in the worker's CPU memory and survives sleep (levels 1 and 2).
* V2 model runner: not wrapped; engine_kwargs.pin_model_runner keeps vLLM 0.24-0.31 on V1.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional

from verl_specrollout import compat
from verl_specrollout.config import SpecRolloutConfig
from verl_specrollout.vllm_adapter.engine_config import engine_config

logger = logging.getLogger("vllm.specrollout_group")

# Per runner: a GroupDrafter, or False for a runner without group drafting (decided once).
STATE_ATTR = "_specrollout_group"
MODEL = "model"  # the chooser's name for the draft model (group_draft/choice.py)
DECOUPLED = "decoupled"  # tails drafted ahead on another replica (verl_specrollout/decoupled)
REPORTED_SOURCES = (MODEL, "siblings", "history", "prompt", DECOUPLED)
_state = {"installed": False}
_warned: set = set()


def _warn_once(key: str, msg: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(msg, *args)


# ----------------------------------------------------------------------------- bookkeeping
@dataclass
class RequestStep:
    """One running request at one step, as the runner sees it."""

    req_id: str
    prompt_len: int
    row: Any  # the request's token row (numpy): tokens 0..known_len-1 are valid
    known_len: int
    sampled: List[int]  # tokens sampled this step (valid ones)
    sampled_in_row: bool  # True when `row[:known_len]` already holds `sampled` (after bookkeeping)
    verified: int  # draft tokens verified this step


@dataclass
class Choice:
    source: str  # MODEL, an index source, or "" (no draft)
    n: int
    tokens: List[int] = field(default_factory=list)  # the suffix draft (empty for MODEL)
    req_id: str = ""  # set when the chooser decided (a decode step with K > 0)
    suffix: Optional[Any] = None  # the index's SuffixDraft offered at that decision


class GroupDrafter:
    """Group index + source chooser + what happened between two steps, for one model runner.
    No torch or vLLM here, so it runs in unit tests as it runs in the worker."""

    def __init__(self, index, chooser, has_model: bool, skip_draft_at_k0: bool = False, decoupled=None):
        self.index = index
        self.chooser = chooser
        self.has_model = has_model
        self.skip_draft_at_k0 = skip_draft_at_k0  # planner.skip_draft_at_k0 (k0_skip.py)
        # decoupled.link.VerifierLink (or None): commits go out and remote tails come in through it;
        # its take() never waits, so a step without a tail that fits drafts as before.
        self.decoupled = decoupled
        self._outputs: Dict[str, List[int]] = {}  # committed output tokens per live request (decoupled)
        self._fed: Dict[str, int] = {}  # tokens of each live request the index has
        self._pending: Dict[str, tuple] = {}  # req_id -> (source, n, step drafted at)
        self._counterfactual: Dict[str, tuple] = {}  # req_id -> (model's unused draft, step drafted at)
        self._step = 0  # engine steps seen (execute_model calls)
        self.counts = {s: {"proposed": 0, "accepted": 0, "chosen": 0} for s in REPORTED_SOURCES}
        self.request_steps = 0  # request-steps that asked for a draft (K > 0)
        self.no_draft = 0  # ... of which drafted nothing

    @classmethod
    def from_config(cls, cfg: SpecRolloutConfig) -> "GroupDrafter":
        """From the engine's typed config (vllm_adapter/engine_config.py)."""
        from verl_specrollout.group_draft import GroupSuffixIndex, SourceChooser

        g = cfg.group
        index = GroupSuffixIndex(max_match=g.max_match, history_depth=g.history_depth,
                                 max_tokens=g.max_index_tokens)
        return cls(index, SourceChooser(), cfg.has_draft_model, skip_draft_at_k0=cfg.planner.skip_draft_at_k0)

    # ------------------------------------------------------------------ per step
    def begin_step(self, finished_req_ids: Iterable[str]) -> None:
        """Every engine step, before the model runs: count it and retire finished requests.
        A draft is settled only at the step right after the one that proposed it: when vLLM skips
        the proposer in between (input too long for the drafter), what it verifies is not ours."""
        self._step += 1
        self.finish(finished_req_ids)

    def engine_idle(self) -> int:
        """The server says no request is left: close them all on the decoupled link now. The engine
        would learn they finished only at a next step, which an idle engine never runs, and until
        then drafters would keep drafting for them. Their group history waits for that step (a
        request still running here after all stays in the index; it only takes no tails)."""
        if self.decoupled is None:
            return 0
        for r in self._outputs:
            self.decoupled.close(r)
        return len(self._outputs)

    def finish(self, req_ids: Iterable[str]) -> None:
        """Finished (or aborted) requests: their responses become the group's history."""
        for r in req_ids:
            if self._fed.pop(r, None) is not None:
                self.index.finish(r, keep=True)
            if self.decoupled is not None and self._outputs.pop(r, None) is not None:
                self.decoupled.close(r)
            self._pending.pop(r, None)
            self._counterfactual.pop(r, None)
            self.chooser.forget(r)

    def update(self, s: RequestStep) -> None:
        """Index the request's new tokens and settle its previous draft."""
        fed = self._fed.get(s.req_id)
        if fed is None:
            self.index.add_request(s.req_id, s.row[:s.prompt_len])
            fed = s.prompt_len
        new: list = []
        if s.known_len > fed:
            new = s.row[fed:s.known_len].tolist()
            fed = s.known_len
        if not s.sampled_in_row and s.sampled:
            new += list(s.sampled)
            fed += len(s.sampled)
        if new:
            self.index.extend(s.req_id, new)
        self._fed[s.req_id] = fed
        if self.decoupled is not None:
            self._publish(s, new)
        pending = self._pending.pop(s.req_id, None)
        if pending is not None and pending[2] == self._step - 1 and s.verified > 0 and s.sampled:
            source, n, _ = pending
            proposed = min(n, s.verified)
            accepted = max(0, min(len(s.sampled) - 1, proposed))
            c = self.counts.setdefault(source, {"proposed": 0, "accepted": 0, "chosen": 0})
            c["proposed"] += proposed
            c["accepted"] += accepted
            self.chooser.observe(s.req_id, source, proposed, accepted)
        cf = self._counterfactual.pop(s.req_id, None)
        if cf is not None and cf[1] == self._step - 1 and s.sampled:
            # s.sampled: the tokens emitted for the step that drafted (accepted + recovered / bonus)
            self.chooser.observe_counterfactual(s.req_id, cf[0], s.sampled)

    def _publish(self, s: RequestStep, new: list) -> None:
        """Commit the request's new output tokens to the decoupled drafters (opened at first sight)."""
        out = self._outputs.get(s.req_id)
        if out is None:
            out = self._outputs[s.req_id] = []
            self.decoupled.open(s.req_id, [int(t) for t in s.row[:s.prompt_len]])
        if new:
            out.extend(int(t) for t in new)
            self.decoupled.commit(s.req_id, out)

    def _decoupled_tail(self, req_id: str, k: int):
        """The remote tail that fits the committed tokens now, as a candidate draft, or None.
        Its per-token shares: the drafter's probability of each token when it sent them, else the
        chooser's prior; the chooser calibrates either by what verification confirms."""
        from verl_specrollout.group_draft.choice import DECOUPLED_PRIOR
        from verl_specrollout.group_draft.index import SuffixDraft

        out = self._outputs.get(req_id)
        taken = self.decoupled.take(req_id, out, k) if out is not None else None
        if taken is None or not taken.tokens:
            return None
        if taken.probs is not None:
            probs = [float(max(row)) if hasattr(row, "__len__") else float(row) for row in taken.probs]
        else:
            probs = [DECOUPLED_PRIOR] * len(taken.tokens)
        return SuffixDraft(list(taken.tokens), DECOUPLED, 0, probs)

    def choose(self, s: RequestStep, k: int) -> Choice:
        if k <= 0 or not s.sampled:  # no draft asked, or a prefill chunk (vLLM drops its drafts)
            return Choice("", 0)
        self.request_steps += 1
        suffix = self.index.propose(s.req_id, k)
        if self.decoupled is not None:  # fastest-of-N: the better of the group's and the remote draft
            suffix = self.chooser.best_candidate(s.req_id, k, [suffix, self._decoupled_tail(s.req_id, k)])
        source, n = self.chooser.choose(s.req_id, k, suffix, model=self.has_model)
        n = max(0, min(int(n), k))
        if source == MODEL and self.has_model:
            choice = Choice(MODEL, n) if n else Choice("", 0)
        elif source:
            tokens = list(suffix.tokens[:n]) if source == suffix.source else []
            choice = Choice(source, len(tokens), tokens) if tokens else Choice("", 0)
        else:
            choice = Choice("", 0)
        choice.req_id, choice.suffix = s.req_id, suffix
        if choice.n:
            self.counts.setdefault(choice.source, {"proposed": 0, "accepted": 0, "chosen": 0})["chosen"] += 1
            self._pending[s.req_id] = (choice.source, choice.n, self._step)
        else:
            self.no_draft += 1
        return choice

    def step(self, batch: List[RequestStep], k: int) -> List[Choice]:
        for s in batch:
            self.update(s)
        return [self.choose(s, k) for s in batch]

    @staticmethod
    def model_k(choices: List[Choice]) -> int:
        """The draft model's K this step: the longest draft any request asked it for."""
        return max((c.n for c in choices if c.source == MODEL), default=0)

    def _with_model_draft(self, choices: List[Choice], model_rows: List[List[int]]) -> None:
        """The model drafted for every request this step: where its first token and the offered
        suffix's differ, the chooser reconsiders; the model's draft of a request that drafts
        otherwise is kept for the counterfactual comparison at the next step."""
        for i, c in enumerate(choices):
            if not c.req_id or i >= len(model_rows) or not model_rows[i]:
                continue
            row = [int(t) for t in model_rows[i]]
            sfx = c.suffix
            if (sfx is not None and sfx.tokens and c.source in (MODEL, sfx.source)
                    and int(sfx.tokens[0]) != row[0]):
                new = self.chooser.reconsider(c.req_id, len(row))
                if new is not None:
                    self._switch(c, new, row)
            if c.source != MODEL:
                self._counterfactual[c.req_id] = (row, self._step)

    def _switch(self, c: Choice, new: tuple, row: List[int]) -> None:
        source, n = new
        old = c.source
        if source == MODEL:
            c.source, c.n, c.tokens = MODEL, len(row), []
        else:
            c.tokens = list(c.suffix.tokens[:n])
            c.source, c.n = source, len(c.tokens)
        self.counts[old]["chosen"] -= 1
        self.counts.setdefault(c.source, {"proposed": 0, "accepted": 0, "chosen": 0})["chosen"] += 1
        self._pending[c.req_id] = (c.source, c.n, self._step)

    def assemble(self, choices: List[Choice], model_rows: Optional[List[List[int]]]) -> List[List[int]]:
        if model_rows is not None:
            self._with_model_draft(choices, model_rows)
        out = []
        for i, c in enumerate(choices):
            if c.source == MODEL:
                # A shorter row needs no fix-up of the pending count: what is settled at the next
                # step is what the scheduler verified.
                out.append(list(model_rows[i][:c.n]) if model_rows is not None and i < len(model_rows) else [])
            else:
                out.append(list(c.tokens))
        if self.decoupled is not None:
            # What this step verifies: drafters pre-draft from its outcomes while the step runs.
            for c, row in zip(choices, out):
                committed = self._outputs.get(c.req_id) if c.req_id else None
                if row and committed is not None:
                    self.decoupled.verifying(c.req_id, len(committed), row)
        return out

    # ------------------------------------------------------------------ metrics
    def stats(self) -> dict:
        """Cumulative counts (the server turns them into per-step deltas)."""
        try:
            index = {k: v for k, v in self.index.stats().items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)}
        except Exception:
            index = {}
        out = {"sources": {s: dict(c) for s, c in self.counts.items()},
               "request_steps": self.request_steps, "no_draft": self.no_draft, "index": index}
        if self.decoupled is not None:
            out["decoupled"] = self.decoupled.stats()
        return out


# ----------------------------------------------------------------------------- runner side
def _group_drafter(runner) -> Optional[GroupDrafter]:
    st = runner.__dict__.get(STATE_ATTR)
    if st is None:
        st = _make_drafter(runner) or False
        setattr(runner, STATE_ATTR, st)
    return st or None


def _make_drafter(runner) -> Optional[GroupDrafter]:
    cfg = engine_config(getattr(runner, compat.VLLM_RUNNER_VLLM_CONFIG_ATTR, None))
    if cfg is None or not cfg.enable or not cfg.group_drafting:
        return None
    method = cfg.method
    spec = getattr(runner, compat.VLLM_RUNNER_SPEC_CONFIG_ATTR, None)
    if spec is None:
        _warn_once("nospec", "specrollout: method=%s but the engine has no speculative_config; no group drafts",
                   method)
        return None
    base = getattr(spec, compat.VLLM_SPEC_METHOD_ATTR, None)
    if base != cfg.base_method:
        _warn_once("base", "specrollout: method=%s needs vLLM method %s, the engine runs %s; no group drafts",
                   method, cfg.base_method, base)
        return None
    if getattr(spec, compat.VLLM_SPEC_DRAFT_SAMPLE_METHOD_ATTR, "greedy") == "probabilistic":
        raise ValueError(
            f"specrollout: method={method} cannot run with speculative_config.draft_sample_method='probabilistic' "
            "(group drafts have no draft-model probabilities for vLLM's ratio test); use the default 'greedy'")
    if getattr(runner, compat.VLLM_RUNNER_ASYNC_SCHED_ATTR, False):
        _warn_once("async", "specrollout: method=%s: this engine runs asynchronous scheduling, which group drafting "
                   "does not support; drafting with %s alone (start the engine with async_scheduling=False)",
                   method, cfg.base_method)
        return None
    drafter = GroupDrafter.from_config(cfg)
    logger.info("specrollout: Best-of-N group drafting on (method=%s, group=%s)", method, cfg.group)
    from verl_specrollout.decoupled.engine import link_for

    drafter.decoupled = link_for(cfg, runner)  # None unless decoupled.enable (and the engine can take tails)
    return drafter


def _sampled_rows(runner, sampled_token_ids, num_reqs: int) -> tuple:
    """(this step's valid tokens per row, whether token_ids_cpu already holds them)."""
    if isinstance(sampled_token_ids, list):  # after vLLM's bookkeeping (ngram, unpadded drafter batch)
        return [list(r) for r in sampled_token_ids[:num_reqs]], True
    batch = getattr(runner, compat.VLLM_RUNNER_INPUT_BATCH_ATTR)
    mask = getattr(runner, compat.VLLM_RUNNER_DISCARD_MASK_ATTR, None)
    flags = getattr(mask, compat.VLLM_CPU_GPU_BUFFER_NP_ATTR) if mask is not None else None
    discard = flags[:num_reqs].nonzero()[0].tolist() if flags is not None else []
    parse = getattr(compat.resolve(compat.VLLM_REJECTION_SAMPLER), compat.VLLM_PARSE_SAMPLER_OUTPUT)
    rows, _ = parse(sampled_token_ids, batch.vocab_size, discard)
    return rows, False


def _batch(runner, scheduler_output, sampled_token_ids) -> List[RequestStep]:
    batch = getattr(runner, compat.VLLM_RUNNER_INPUT_BATCH_ATTR)
    req_ids = list(getattr(batch, compat.VLLM_INPUT_BATCH_REQ_IDS))
    rows, in_row = _sampled_rows(runner, sampled_token_ids, len(req_ids))
    spec = getattr(scheduler_output, compat.SCHED_OUT_SPEC_TOKENS_ATTR, None) or {}
    out = []
    for i, req_id in enumerate(req_ids):
        if req_id is None:
            continue
        out.append(RequestStep(req_id=req_id, prompt_len=int(batch.num_prompt_tokens[i]), row=batch.token_ids_cpu[i],
                               known_len=int(batch.num_tokens_no_spec[i]),
                               sampled=rows[i] if i < len(rows) else [], sampled_in_row=in_row,
                               verified=len(spec.get(req_id, ()))))
    return out


def _with_k(scheduler_output, k: int):
    """A shallow copy of the step's scheduler output asking the drafter for K=k."""
    if compat.scheduled_k(scheduler_output) == k:
        return scheduler_output
    so = copy.copy(scheduler_output)
    setattr(so, compat.SCHED_OUT_NUM_SPEC_TOKENS_ATTR, k)
    return so


def _rows(draft) -> List[List[int]]:
    return draft.tolist() if hasattr(draft, "tolist") else [list(r) for r in draft]


def propose_with_group(runner, drafter: GroupDrafter, original, scheduler_output, sampled_token_ids,
                       args: tuple, kwargs: dict):
    k = compat.scheduled_k(scheduler_output)
    try:
        choices = drafter.step(_batch(runner, scheduler_output, sampled_token_ids), k)
    except Exception:
        logger.exception("specrollout: group drafting failed; this engine drafts with its base method from now on")
        setattr(runner, STATE_ATTR, False)
        return original(runner, scheduler_output, sampled_token_ids, *args, **kwargs)
    rows = None
    if drafter.has_model:
        if k == 0:  # speculation off this step: vLLM's own behaviour, untouched
            return original(runner, scheduler_output, sampled_token_ids, *args, **kwargs)
        rows = _rows(_model_draft(runner, drafter, original, scheduler_output, drafter.model_k(choices),
                                  sampled_token_ids, args, kwargs))
    return drafter.assemble(choices, rows)


def _model_draft(runner, group: GroupDrafter, original, scheduler_output, model_k: int, sampled_token_ids,
                 args, kwargs):
    so = _with_k(scheduler_output, model_k)
    proposer = getattr(runner, compat.VLLM_RUNNER_DRAFTER_ATTRS[0], None)
    if model_k > 0 or not group.skip_draft_at_k0 or proposer is None:
        return original(runner, so, sampled_token_ids, *args, **kwargs)
    # K=0 for the model while the step's K > 0: the draft's first pass must run (KV cache in sync
    # for the steps that draft with the model again), so the planner's K=0 skip is off for this call.
    from verl_specrollout.vllm_adapter import k0_skip

    k0_skip.set_enabled(proposer, False)
    try:
        return original(runner, so, sampled_token_ids, *args, **kwargs)
    finally:
        k0_skip.set_enabled(proposer, True)


def install() -> bool:
    """Wrap the V1 model runner's propose_draft_token_ids and execute_model once per process.
    Never raises: another vLLM layout keeps vLLM's behaviour (group drafting off, logged)."""
    if _state["installed"]:
        return True
    try:
        cls = compat.resolve(compat.VLLM_V1_MODEL_RUNNER)
        propose_orig = getattr(cls, compat.VLLM_RUNNER_PROPOSE_METHOD)
        execute_orig = getattr(cls, compat.VLLM_RUNNER_EXECUTE_METHOD)
    except Exception as exc:
        logger.warning("specrollout: cannot install group drafting (%r); group methods draft with their base method",
                       exc)
        return False

    def propose_draft_token_ids(self, scheduler_output, sampled_token_ids, *args, **kwargs):
        drafter = _group_drafter(self)
        if drafter is None:
            return propose_orig(self, scheduler_output, sampled_token_ids, *args, **kwargs)
        return propose_with_group(self, drafter, propose_orig, scheduler_output, sampled_token_ids, args, kwargs)

    def execute_model(self, scheduler_output, *args, **kwargs):
        drafter = _group_drafter(self)
        if drafter is not None:
            drafter.begin_step(getattr(scheduler_output, compat.SCHED_OUT_FINISHED_ATTR, None) or ())
        return execute_orig(self, scheduler_output, *args, **kwargs)

    propose_draft_token_ids.__wrapped__ = propose_orig
    execute_model.__wrapped__ = execute_orig
    setattr(cls, compat.VLLM_RUNNER_PROPOSE_METHOD, propose_draft_token_ids)
    setattr(cls, compat.VLLM_RUNNER_EXECUTE_METHOD, execute_model)
    _state["installed"] = True
    return True


def decoupled_engine_idle(worker) -> int:
    """Inside a vLLM worker (collective_rpc), when the server has no request in flight: the
    decoupled link closes every request it holds (GroupDrafter.engine_idle); how many."""
    runner = getattr(worker, compat.VLLM_WORKER_MODEL_RUNNER, worker)
    st = getattr(runner, "__dict__", {}).get(STATE_ATTR)
    if not st or st.decoupled is None:
        return 0
    return st.engine_idle()


def decoupled_set_version(worker, version: int) -> bool:
    """Inside a vLLM worker (collective_rpc), after a draft reload: tails drafted with another draft
    version are dropped and refused from now on. False when the engine takes no decoupled tails."""
    runner = getattr(worker, compat.VLLM_WORKER_MODEL_RUNNER, worker)
    st = getattr(runner, "__dict__", {}).get(STATE_ATTR)
    if not st or st.decoupled is None:
        return False
    st.decoupled.set_version(int(version))
    return True


def worker_stats(worker) -> dict:
    """Inside a vLLM worker (collective_rpc): the group drafter's cumulative counts, {} when off."""
    runner = getattr(worker, compat.VLLM_WORKER_MODEL_RUNNER, worker)
    st = getattr(runner, "__dict__", {}).get(STATE_ATTR)
    return st.stats() if st else {}
