"""Make K = 0 really plain decoding for model drafters (``vllm.general_plugins`` entry point).

In vLLM 0.31/0.32's dynamic-K path a model drafter (eagle, eagle3, draft_model) still runs
its first forward when the scheduler asks for K = 0 "to keep the drafter KV cache in sync"
(``SpecDecodeBaseProposer.propose`` in v1/spec_decode/llm_base_proposer.py) and then returns
an empty draft. On a crowded engine that forward is pure overhead: K = 0 is chosen exactly
when speculation does not pay, yet the engine still pays one draft pass per step, so
"speculation off" is slower than an engine without speculation.

With ``specrollout.planner.skip_draft_at_k0`` on, we return the empty draft without that
forward. Cost: the draft's KV cache has no entries for the positions decoded at K = 0, so
once K > 0 again (the long tail) the draft attends to stale slots for those positions and
accepts less. Verification is unchanged (the target still checks every draft token), so
sampling stays exact; only the acceptance rate can drop, and the planner sees that drop in
its online acceptance estimate like any other. ``benchmarks/grpo_rollout.py`` measures
both settings side by side.

Installed at class level in every vLLM process (vllm_adapter/engine_patches.py, and explicitly by
``make_llm`` for in-process engines); a proposer reads the switch from its own engine's config once
(vllm_adapter/engine_config.py), so engines without our config are untouched.
"""

from __future__ import annotations

import logging

from verl_specrollout import compat
from verl_specrollout.vllm_adapter.engine_config import engine_config

logger = logging.getLogger("vllm.specrollout_k0")

_FLAG = "_specrollout_skip_k0"
_state = {"installed": False}


def _skip_enabled(proposer) -> bool:
    flag = getattr(proposer, _FLAG, None)
    if flag is None:
        cfg = engine_config(getattr(proposer, "vllm_config", None))
        # Through the typed config, so the key's default is the one the planner prices K=0 with
        # (an engine without our config is not ours: no skip).
        flag = cfg is not None and cfg.planner.skip_draft_at_k0
        setattr(proposer, _FLAG, flag)
        if flag:
            logger.info("specrollout: K=0 steps skip the draft forward (planner.skip_draft_at_k0)")
    return flag


def set_enabled(proposer, flag: bool) -> None:
    """Switch the skip for one live proposer (benchmarks compare both inside one engine)."""
    setattr(proposer, _FLAG, bool(flag))


def install() -> bool:
    """Wrap SpecDecodeBaseProposer.propose once per process. Never raises."""
    if _state["installed"]:
        return True
    try:
        import torch

        cls = compat.resolve(compat.VLLM_PROPOSER)
        original = getattr(cls, compat.VLLM_PROPOSE_METHOD)
    except Exception as exc:  # another vLLM layout: keep vLLM's behaviour
        logger.warning("specrollout: cannot install the K=0 draft skip (%r); K=0 keeps vLLM's draft pass", exc)
        return False

    def propose(self, num_speculative_tokens, *args, **kwargs):
        if num_speculative_tokens == 0 and _skip_enabled(self):
            cad = kwargs.get(compat.VLLM_PROPOSE_ATTN_METADATA_KW)
            if cad is None:
                cad = args[compat.VLLM_PROPOSE_ATTN_METADATA_POS]
            self.num_speculative_tokens = 0
            self._last_draft_probs = None
            return torch.empty(cad.batch_size(), 0, device=self.device, dtype=torch.int64)
        return original(self, num_speculative_tokens, *args, **kwargs)

    propose.__wrapped__ = original
    setattr(cls, compat.VLLM_PROPOSE_METHOD, propose)
    _state["installed"] = True
    return True
