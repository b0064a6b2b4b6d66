"""vLLM worker extension for veRL's rollout servers with the online learner on.

vLLM's multiprocess executor serialises ``collective_rpc`` arguments with msgspec and refuses a
callable (unless VLLM_ALLOW_INSECURE_SERIALIZATION=1, i.e. pickle over the IPC sockets). So the
reload runs by *method name* instead: the server (verl_adapter/server.py) asks vLLM for this
class as ``worker_extension_cls``; it is veRL's own colocate extension plus our methods: the draft
reload (and restore after a sleep), keeping the draft tensors a level-2 sleep would lose
(vllm_adapter/draft_sleep.py), the group drafter's counters (vllm_adapter/group_proposer.py), and
the decoupled verifier link's draft version after a reload, and its requests closed when the
server has none in flight.
"""

from __future__ import annotations

from verl_specrollout import compat
from verl_specrollout.vllm_adapter.draft_reload import keep_draft_in_worker, reload_draft_in_worker
from verl_specrollout.vllm_adapter.group_proposer import decoupled_engine_idle, decoupled_set_version, worker_stats

_Base = compat.resolve(compat.VERL_VLLM_WORKER_EXTENSION)


class SpecRolloutWorkerExtension(_Base):
    def specrollout_reload_draft(self, ckpt_dir: str, version: int, restore: bool = False) -> dict:
        return reload_draft_in_worker(self, ckpt_dir, version, restore)

    def specrollout_keep_draft(self, ckpt_dir, live: bool = True) -> dict:
        return keep_draft_in_worker(self, ckpt_dir, live)

    def specrollout_group_stats(self) -> dict:
        return worker_stats(self)

    def specrollout_decoupled_set_version(self, version: int) -> bool:
        return decoupled_set_version(self, version)

    def specrollout_decoupled_engine_idle(self) -> int:
        return decoupled_engine_idle(self)
