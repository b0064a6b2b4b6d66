"""Concurrency-aware draft-length planning (numpy and scipy; no torch / vLLM imports).

estimation   acceptance.py (AcceptanceEstimator, PerRequestAcceptance), cost_model.py (StepCostModel),
             estimates.py (Estimates: both, and where steps were timed)
decision     decision.py (pure: estimates -> KTable; allocate_verification_budget)
table        ktable.py (KTable: K per batch size, in vLLM's rows and lookup forms)
bookkeeping  planner.py (Planner: modes, cold start, re-plan timing, K histogram, PlannerStats)
replay       trace.py (recorded step traces, policies replayed on them)
"""

from verl_specrollout.planner.acceptance import AcceptanceEstimator, PerRequestAcceptance, expected_tokens
from verl_specrollout.planner.cost_model import StepCostModel
from verl_specrollout.planner.decision import allocate_verification_budget, choose_k, initial_table
from verl_specrollout.planner.estimates import Estimates
from verl_specrollout.planner.ktable import KTable
from verl_specrollout.planner.planner import Planner
from verl_specrollout.rollout_stats import PlannerStats

__all__ = [
    "AcceptanceEstimator",
    "PerRequestAcceptance",
    "expected_tokens",
    "StepCostModel",
    "Estimates",
    "KTable",
    "Planner",
    "PlannerStats",
    "allocate_verification_budget",
    "choose_k",
    "initial_table",
]
