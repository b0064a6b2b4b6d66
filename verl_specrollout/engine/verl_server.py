"""veRL's vLLM rollout server and replica, with speculation switched on from our config.

We subclass rather than register a new rollout name: veRL 0.9.1 has many
`rollout.name == "vllm"` checks (weight sync, checkpoint engine, config utils) that a
new name would trip. The replica picks our server class only when
`rollout.custom.specrollout.enable` is true, so "off" runs veRL's own class.
"""

from __future__ import annotations

import logging

import ray
from verl.workers.rollout.vllm_rollout.vllm_async_server import vLLMHttpServer, vLLMReplica

from verl_specrollout.config import SpecRolloutConfig
from verl_specrollout.engine.compat import check_versions
from verl_specrollout.engine.speculative import build_engine_kwargs

logger = logging.getLogger(__name__)


class SpecRolloutHttpServer(vLLMHttpServer):
    """vLLMHttpServer whose engine starts with our speculative_config and scheduler."""

    def _preprocess_engine_kwargs(self, engine_kwargs: dict) -> None:
        super()._preprocess_engine_kwargs(engine_kwargs)
        spec_cfg = SpecRolloutConfig.from_rollout_config(self.config)
        if not spec_cfg.enable:
            return
        check_versions()
        extra = build_engine_kwargs(spec_cfg, target_path=self.model_config.local_path, existing=engine_kwargs)
        engine_kwargs.update(extra)
        logger.info("verl-specrollout: speculative engine kwargs %s", extra)


class SpecRolloutReplica(vLLMReplica):
    def __init__(self, replica_rank, config, model_config, *args, **kwargs):
        super().__init__(replica_rank, config, model_config, *args, **kwargs)
        spec_cfg = SpecRolloutConfig.from_rollout_config(self.config)
        if spec_cfg.enable:
            # Fail in the trainer process, before any engine starts, on a bad config.
            check_versions()
            spec_cfg.validate(getattr(self.model_config, "local_path", None))
            self.server_class = ray.remote(SpecRolloutHttpServer)
