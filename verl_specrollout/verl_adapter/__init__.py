"""What runs inside veRL: rollout server/replica subclasses, the vLLM worker extension veRL
installs, actor-worker and trainer hooks (capture, learner, per-step metrics)."""
