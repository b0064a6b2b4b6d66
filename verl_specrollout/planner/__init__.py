"""Concurrency-aware draft-length planning (numpy and scipy; no torch / vLLM imports)."""

from verl_specrollout.planner.acceptance import AcceptanceEstimator, PerRequestAcceptance, expected_tokens
from verl_specrollout.planner.cost_model import StepCostModel
from verl_specrollout.planner.planner import (
    Planner,
    allocate_verification_budget,
    choose_k,
    dense_to_rows,
    resize_dense,
    rows_to_dense,
)

__all__ = [
    "AcceptanceEstimator",
    "PerRequestAcceptance",
    "expected_tokens",
    "StepCostModel",
    "Planner",
    "allocate_verification_budget",
    "choose_k",
    "dense_to_rows",
    "resize_dense",
    "rows_to_dense",
]
