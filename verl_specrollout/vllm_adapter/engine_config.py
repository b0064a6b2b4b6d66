"""The engine's own specrollout config, read once per process.

The trainer checks the user's config and sends ``SpecRolloutConfig.engine_dict()`` to vLLM as
``additional_config["specrollout"]`` (vllm_adapter/engine_kwargs.py). Every piece that runs inside
an engine process -- the scheduler, the K=0 draft skip, the group drafter, the TP probes -- needs
that config back, typed. They all read it here::

    from verl_specrollout.vllm_adapter.engine_config import engine_config

    cfg = engine_config(self.vllm_config)   # Scheduler: self.vllm_config; runner/proposer: theirs
    if cfg is None:                          # not our engine (no specrollout block): leave vLLM alone
        return
    cfg.planner.skip_draft_at_k0             # typed, defaults filled in, rules between keys checked

The first call for a given config parses and checks it; later calls (other components, other
engines of the same job in one process) get the same object back. So treat it as read-only: a
component that needs a different value (the scheduler aligning ``max_k`` with the engine's) takes
its own ``copy.deepcopy(cfg)`` first.

A config that does not pass the checks raises SpecRolloutConfigError naming the key, every time it
is asked for: the trainer checked it already, so this only happens when an engine is started by
hand with a hand-written ``additional_config``, and then the engine should not start.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Optional

from verl_specrollout import compat
from verl_specrollout.config import ADDITIONAL_CONFIG_KEY, SpecRolloutConfig, SpecRolloutConfigError

# Keyed by the raw block's content, not by the VllmConfig object: vLLM copies its config between
# the engine core and the workers (and tests start several engines in one process), and two copies
# of one config must not be parsed twice, while two engines with different configs must not share.
_cache: dict = {}
_lock = threading.Lock()  # the scheduler and the workers' threads may ask at the same time


def engine_config(vllm_config: Any) -> Optional[SpecRolloutConfig]:
    """The typed specrollout config of the engine `vllm_config` belongs to; None when it has none.

    An empty or null block counts as none (an engine started without our config).
    """
    raw = compat.additional_config(vllm_config).get(ADDITIONAL_CONFIG_KEY)
    return parse_engine_block(raw)


def parse_engine_block(raw: Any) -> Optional[SpecRolloutConfig]:
    """`additional_config["specrollout"]` as a typed config, cached by content (see engine_config)."""
    if not raw:
        return None
    key = _content_key(raw)
    with _lock:
        cfg = _cache.get(key)
        if cfg is None:
            try:
                cfg = SpecRolloutConfig.from_dict(raw)
            except SpecRolloutConfigError as exc:
                raise SpecRolloutConfigError(f"vLLM additional_config[{ADDITIONAL_CONFIG_KEY!r}]: {exc}") from exc
            _cache[key] = cfg
        return cfg


def _content_key(raw: Any) -> str:
    # The block is what engine_dict() wrote (JSON-shaped); repr() covers anything a hand-written one adds.
    try:
        return json.dumps(raw, sort_keys=True, default=repr)
    except (TypeError, ValueError):  # e.g. keys of mixed types: the repr still tells configs apart
        return repr(raw)


def clear_cache() -> None:
    """Forget every parsed config (tests that change one engine's block in place)."""
    with _lock:
        _cache.clear()
