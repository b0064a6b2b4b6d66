"""Thin adapters between our config/planner and veRL's and vLLM's classes."""
