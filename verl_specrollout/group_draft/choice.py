"""Per-request Best-of-N: draft this step from the draft model or from the group suffix index.

The rule, per request and step, within the planner's k:

- model option: E_model = sum_{j=1..k} a^j, with a the request's running per-token acceptance of
  the model's drafts (decayed counts of accepted / tried positions, shrunk towards a base rate
  with `prior_weight` pseudo-trials; the base is `model_alpha` -- the engine's running acceptance
  -- when given, else the chooser's own decayed estimate over all requests shrunk to
  `prior_model_alpha`). "Tried" positions are those up to and including the first rejection.
  Where a suffix is offered, a is the model's rate on such steps instead (below).
- suffix option: the draft's per-token count shares p_j, calibrated: p'_j = min(1, c * p_j), where
  c = observed accepted / predicted (sum of p over tried positions) for this request and source,
  shrunk towards the same ratio over all requests for the source (itself shrunk towards 1). An
  over-confident source (shares that verification does not confirm) gets c < 1 and loses weight.
  The draft is cut where the marginal expected gain prod_{i<=j} p'_i of its next token drops below
  `min_gain` (each verified token costs verification work; SuffixDecoding's own cut-off, 0.1, is
  the default); E_suffix = sum of the kept tokens' marginal gains.
- choose the larger; a tie goes to the suffix (it costs no draft forward). ("", 0) when neither
  option's first token reaches `min_gain` (nothing pays), and always when k == 0.

Why geometric: a chain draft is accepted up to its first rejection, so E[accepted] = sum_j
P(tokens 1..j accepted) = sum_j prod_{i<=j} alpha_i. With one per-token rate for the model
(alpha_i = a) this is sum a^j; the suffix draft carries its own per-token alpha_i (calibrated
shares). What it ignores: that the model's acceptance falls with depth (one rate for all
positions), the draft model's forward cost (the suffix is free; the tie rule is the only nod to
it), the difference in verification cost between n and k tokens beyond the `min_gain` cut,
and correlation between successive tokens.

The model's side where a suffix is offered. Suffix drafts exist in easy, templated stretches, where
the draft model is far above its request average too; comparing the suffix with that average
hands the suffix steps the model would have won (selection bias). So the model's rate on steps
where a suffix draft was offered (n > 0, the "offered" class) is estimated apart, per request
(decay `decay`) and over all requests (`global_decay`), and replaces the average there; with no
such evidence yet it falls back to the average (request level: `prior_weight` pseudo-trials
towards the global offered rate, which has `prior_weight` pseudo-trials towards the request's
average). Its evidence:
(a) real model drafts verified on offered steps, counted as always (accepted up to and including
    the first rejection);
(b) counterfactual drafts: when the draft model ran this step (some request chose it, so it drafts
    for the whole batch), the model's draft d_1..d_K of a request that drafted otherwise is kept
    and compared at the next step with the tokens the request emitted, e_1..e_L (accepted draft
    tokens, then the recovered / bonus token). vLLM's rejection sampler with one-hot q emits at
    every verified position an exact sample of the target's p given the context, whatever was
    drafted (module group_proposer: "Lossless"), and d_j is fixed by the past; so given
    d_1..d_{j-1} = e_1..e_{j-1} (same context), P(e_j = d_j) = p(d_j) = P(the model's d_j would be
    accepted). Each compared position up to the first mismatch is one trial, as for a real
    draft: with m the common prefix length, accepted m, trials min(m + 1, L, K). Censoring: when
    the prefix runs to the end of the emitted tokens (m = L < K) the model's next token was never
    put to the target -- "at least m", so m trials and no rejection; m = K is a fully accepted
    draft (K trials, no rejection). Steps with no suffix offered feed the same comparison into
    the request average (a model rated below `min_gain` there is never run for the request
    otherwise, and could not come back).

Disagreement, when both drafts are at hand (the model ran this step and a suffix was offered; see
`reconsider`): if the two first tokens differ, at most one of them is accepted. With a the model's
offered rate and p = p'_1 the suffix's first calibrated share, treating the two first-token events
as independent, P(model right | they differ) : P(suffix right | they differ) = a (1 - p) :
p (1 - a), and the rest of each draft is unchanged; so the expected accepted tokens given the
disagreement compare as E_model (1 - p) against E_suffix (1 - a), and the larger wins (the option
with the likelier first token, weighted by what follows it; a suffix with p = 1 is kept). When the
first tokens agree the choice stands (the longer-expected draft, as above). Only steps where the
model runs get this check: the model is not run for the check alone.

Forgetting instead of exploration: a suffix source offered but not chosen loses part of its
evidence (its request and global accepted/predicted counts decay by `global_decay` per such
step: slowly, a source shut out is retried after ~1/(1 - global_decay) passes, not every few steps), so its calibration drifts back to the prior (1) and it is tried again. Without
it one bad stretch -- e.g. siblings in lock-step at T = 0, which never win a verification --
would shut a source out for the rest of the run while the data changes (T = 1, next epoch).
"""

from __future__ import annotations

import logging
from typing import Dict, Optional, Tuple

from verl_specrollout.group_draft.index import SOURCES, SuffixDraft

logger = logging.getLogger(__name__)

MODEL = "model"
NONE = "none"  # counters() key for steps where nothing was drafted
# A tail drafted ahead by a drafter on another replica (verl_specrollout/decoupled): a non-model
# candidate like the index's suffixes, with per-token shares from the drafter (its probability of
# each token) or `DECOUPLED_PRIOR`, calibrated by what verification confirms, like theirs.
DECOUPLED = "decoupled"
DECOUPLED_PRIOR = 0.7
CANDIDATES = SOURCES + (DECOUPLED,)
OPTIONS = (MODEL,) + CANDIDATES


class _RequestState:
    __slots__ = ("model_acc", "model_tried", "off_acc", "off_tried", "cal", "pending", "offered", "plan")

    def __init__(self):
        self.model_acc = 0.0
        self.model_tried = 0.0
        self.off_acc = 0.0  # model evidence on offered steps (real and counterfactual), decayed
        self.off_tried = 0.0
        self.cal: Dict[str, list] = {}  # source -> [accepted, predicted], decayed
        self.pending: Optional[Tuple[str, list]] = None  # last choice: (source, raw probs drafted)
        self.offered = False  # a suffix draft (n > 0) was offered at the last choice
        # last choice's options, for `reconsider`: (source, n, probs, e_suffix, model alpha, k), or None
        self.plan: Optional[tuple] = None


class SourceChooser:
    def __init__(self, prior_model_alpha: float = 0.6, decay: float = 0.8, global_decay: float = 0.99,
                 prior_weight: float = 2.0, min_gain: float = 0.1):
        for name, v in (("prior_model_alpha", prior_model_alpha), ("decay", decay),
                        ("global_decay", global_decay), ("min_gain", min_gain)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if prior_weight <= 0:
            raise ValueError(f"prior_weight must be > 0, got {prior_weight}")
        self.prior_model_alpha = prior_model_alpha
        self.decay = decay
        self.global_decay = global_decay
        self.prior_weight = prior_weight
        self.min_gain = min_gain
        self._reqs: Dict[str, _RequestState] = {}
        self._g_model = [0.0, 0.0]  # accepted, tried (decayed)
        self._g_off = [0.0, 0.0]  # accepted, tried on offered steps (decayed)
        self._g_cal = {s: [0.0, 0.0] for s in CANDIDATES}  # accepted, predicted (decayed)
        self._counts = {s: {"proposed": 0, "accepted": 0, "chosen": 0} for s in OPTIONS + (NONE,)}
        self._warned_bad_counts = False

    # ------------------------------------------------------------- estimates
    def model_alpha(self, req_id: str, model_alpha: Optional[float] = None) -> float:
        """The request's per-token acceptance of model drafts."""
        w = self.prior_weight
        if model_alpha is not None:
            base = min(1.0, max(0.0, float(model_alpha)))
        else:
            acc, tried = self._g_model
            base = (acc + w * self.prior_model_alpha) / (tried + w)
        st = self._reqs.get(req_id)
        if st is None:
            return base
        return (st.model_acc + w * base) / (st.model_tried + w)

    def offered_alpha(self, req_id: str, model_alpha: Optional[float] = None) -> float:
        """The model's per-token acceptance on steps where a suffix is offered (module docstring)."""
        w = self.prior_weight
        acc, tried = self._g_off
        g = (acc + w * self.model_alpha(req_id, model_alpha)) / (tried + w)
        st = self._reqs.get(req_id)
        if st is None:
            return g
        return (st.off_acc + w * g) / (st.off_tried + w)

    @staticmethod
    def _expected_model(a: float, k: int) -> float:
        return a * (1.0 - a ** k) / (1.0 - a) if a < 1.0 else float(k)

    def calibration(self, req_id: str, source: str) -> float:
        """Observed / predicted accepted tokens of `source`'s drafts for the request (1 = shares are right)."""
        w = self.prior_weight
        acc, pred = self._g_cal[source]
        c = (acc + w) / (pred + w)
        st = self._reqs.get(req_id)
        if st is not None and source in st.cal:
            acc, pred = st.cal[source]
            c = (acc + w * c) / (pred + w)
        return c

    def suffix_plan(self, req_id: str, k: int, suffix: SuffixDraft) -> Tuple[int, float]:
        """(n tokens worth drafting, their expected accepted tokens) for the suffix draft."""
        if not suffix.tokens or suffix.source not in CANDIDATES:
            return 0, 0.0
        c = self.calibration(req_id, suffix.source)
        e, p, n = 0.0, 1.0, 0
        for q in suffix.probs[:k]:
            p *= min(1.0, c * q)
            if p < self.min_gain:
                break
            e += p
            n += 1
        return n, e

    def best_candidate(self, req_id: str, k: int, candidates) -> SuffixDraft:
        """Fastest-of-N among the drafts that cost no forward here (the index's suffix, a decoupled
        tail): the one with the larger calibrated expected gain at K, an empty draft when none has
        tokens. A tie keeps the earlier candidate (the index's). `choose` then weighs it against
        the model."""
        best, best_e = None, -1.0
        for c in candidates:
            if c is None or not c.tokens:
                continue
            _, e = self.suffix_plan(req_id, k, c)
            if e > best_e:
                best, best_e = c, e
        return best if best is not None else SuffixDraft([], "", 0, [])

    # ------------------------------------------------------------- decisions
    def choose(self, req_id: str, k: int, suffix: SuffixDraft, model_alpha: Optional[float] = None,
               model: bool = True) -> Tuple[str, int]:
        """("model", k) or (suffix.source, n <= len(suffix.tokens)) or ("", 0) when nothing pays.
        model=False leaves the draft model out (a suffix-only drafter)."""
        if suffix.source and suffix.source not in CANDIDATES:
            raise ValueError(f"suffix draft source must be one of {CANDIDATES} or '', got {suffix.source!r}")
        st = self._reqs.get(req_id)
        if st is None:
            st = self._reqs[req_id] = _RequestState()
        st.pending, st.offered, st.plan = None, False, None
        if k <= 0:
            self._counts[NONE]["chosen"] += 1
            return "", 0
        n, e_suffix = self.suffix_plan(req_id, k, suffix)
        st.offered = n > 0
        e_model = 0.0
        if model:
            a = self.offered_alpha(req_id, model_alpha) if n else self.model_alpha(req_id, model_alpha)
            if a >= self.min_gain:
                e_model = self._expected_model(a, k)
            if n and e_model > 0.0:
                st.plan = (suffix.source, n, list(suffix.probs[:n]), e_suffix, a, k)
        if n and e_suffix >= e_model:
            st.pending = (suffix.source, list(suffix.probs[:n]))
            self._counts[suffix.source]["chosen"] += 1
            return suffix.source, n
        if suffix.source:
            self._forget_some(st, suffix.source)
        if e_model > 0.0:
            st.pending = (MODEL, [])
            self._counts[MODEL]["chosen"] += 1
            return MODEL, k
        self._counts[NONE]["chosen"] += 1
        return "", 0

    def reconsider(self, req_id: str, model_n: int) -> Optional[Tuple[str, int]]:
        """Both drafts of the last choice are at hand and their first tokens differ: the choice by
        the expected accepted tokens given the disagreement (module docstring), with the model's
        draft `model_n` tokens long. Returns the new (source, n) when it changes, else None.
        Nothing changes unless the last choice had both options (a suffix with n > 0, a model
        worth running)."""
        st = self._reqs.get(req_id)
        if st is None or st.plan is None or st.pending is None or model_n <= 0:
            return None
        source, n, probs, e_suffix, a, k = st.plan
        st.plan = None  # once per step
        p1 = min(1.0, self.calibration(req_id, source) * probs[0])
        e_model = self._expected_model(a, min(k, model_n))
        now = st.pending[0]
        if now == MODEL and e_suffix * (1.0 - a) > e_model * (1.0 - p1):
            st.pending = (source, list(probs))
            new = (source, n)
        elif now == source and e_model * (1.0 - p1) > e_suffix * (1.0 - a):
            st.pending = (MODEL, [])
            new = (MODEL, model_n)
        else:
            return None
        self._counts[now]["chosen"] -= 1
        self._counts[new[0]]["chosen"] += 1
        return new

    def observe_counterfactual(self, req_id: str, model_draft, emitted) -> None:
        """The model's draft for a step where the request drafted otherwise, against the tokens the
        request emitted at that step (module docstring): a censored geometric observation of the
        model's acceptance, for the offered class when a suffix was offered, else the request
        average."""
        model_draft, emitted = list(model_draft), list(emitted)
        if not model_draft or not emitted:
            return
        m = 0
        for d, e in zip(model_draft, emitted):
            if d != e:
                break
            m += 1
        tried = min(m + 1, len(emitted), len(model_draft))  # censored past the emitted tokens
        st = self._reqs.get(req_id)
        if st is None:
            st = self._reqs[req_id] = _RequestState()
        self._credit_model(st, m, tried, st.offered, request_average=not st.offered)

    def _credit_model(self, st: _RequestState, accepted: int, tried: int, offered: bool,
                      request_average: bool) -> None:
        d, gd = self.decay, self.global_decay
        if request_average:
            st.model_acc = st.model_acc * d + accepted
            st.model_tried = st.model_tried * d + tried
            g = self._g_model
            g[0], g[1] = g[0] * gd + accepted, g[1] * gd + tried
        if offered:
            st.off_acc = st.off_acc * d + accepted
            st.off_tried = st.off_tried * d + tried
            g = self._g_off
            g[0], g[1] = g[0] * gd + accepted, g[1] * gd + tried

    def _forget_some(self, st: _RequestState, source: str) -> None:
        """`source` was offered and passed over: age its evidence (see the module docstring)."""
        g = self._g_cal[source]
        g[0], g[1] = g[0] * self.global_decay, g[1] * self.global_decay
        cal = st.cal.get(source)
        if cal is not None:
            cal[0], cal[1] = cal[0] * self.global_decay, cal[1] * self.global_decay

    def observe(self, req_id: str, source: str, proposed: int, accepted: int) -> None:
        """Verification result of the request's draft this step."""
        if source not in OPTIONS:
            if source == "":
                return  # nothing was drafted
            raise ValueError(f"source must be one of {OPTIONS} or '', got {source!r}")
        if proposed <= 0:
            return
        if not 0 <= accepted <= proposed:
            if not self._warned_bad_counts:
                logger.warning("draft source chooser: accepted=%s outside [0, proposed=%s]; clipped "
                               "(logged once)", accepted, proposed)
                self._warned_bad_counts = True
            accepted = min(max(accepted, 0), proposed)
        cnt = self._counts[source]
        cnt["proposed"] += proposed
        cnt["accepted"] += accepted
        st = self._reqs.get(req_id)
        if st is None:
            st = self._reqs[req_id] = _RequestState()
        pending, st.pending = st.pending, None
        tried = min(accepted + 1, proposed)
        d, gd = self.decay, self.global_decay
        if source == MODEL:
            self._credit_model(st, accepted, tried, st.offered, request_average=True)
            return
        if pending is None or pending[0] != source or not pending[1]:
            return  # no shares known for what was verified: nothing to calibrate against
        probs = pending[1]
        predicted = sum(probs[:tried]) + probs[-1] * max(0, tried - len(probs))
        cal = st.cal.get(source)
        if cal is None:
            st.cal[source] = [float(accepted), predicted]
        else:
            cal[0], cal[1] = cal[0] * d + accepted, cal[1] * d + predicted
        g = self._g_cal[source]
        g[0], g[1] = g[0] * gd + accepted, g[1] * gd + predicted

    def forget(self, req_id: str) -> None:
        self._reqs.pop(req_id, None)

    def counters(self) -> dict:
        """Per option (model, each source, "none"): proposed and accepted tokens, chosen request-steps."""
        return {s: dict(c) for s, c in self._counts.items()}

    def __len__(self) -> int:
        return len(self._reqs)
