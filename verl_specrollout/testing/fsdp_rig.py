"""The actor side at data-parallel world size > 1 on CPU: FSDP2 (``fully_shard``) over gloo.

:func:`launch` starts ``world`` processes (``torch.multiprocessing``, spawn); each joins a gloo
process group, loads the target, shards it with FSDP2 (every decoder layer, then the root, as veRL's
FSDP2 engine does), applies the same "policy update" to its own shards, and then

* runs veRL's packed old-log-prob forward (``FSDPEngineWithLMHead.forward_step``'s (1, nnz) packing,
  forward_only) over *its own* data-parallel shard of a global batch with our capture installed
  (capture/verl_capture.py ``EngineCapture``, as tests/unit/capture_rig.py does at world size 1):
  once without a budget and once with the rank's share of a step budget (``rank_budget_bytes``);
* reads the policy's embedding and lm_head with ``policy_shared_weights`` (verl_adapter/actor_hooks.py:
  FSDP2 DTensors, ``full_tensor`` all-gather, a collective every rank calls).

Each rank writes what it got to ``<out_dir>/rank<r>.pt``; the caller compares it with an unsharded
forward. Nothing in the product imports this module.
"""

from __future__ import annotations

import os
import socket
from typing import Sequence

import torch

POLICY_DELTA = 0.25  # what "the policy moved" adds to lm_head (on the shards; the caller adds it unsharded)


def global_batch(vocab_size: int, n: int, seed: int = 7) -> list:
    """``n`` (prompt, response) token pairs of varying lengths, the same on every rank."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p = torch.randint(3, vocab_size, (4 + (i % 3),), generator=g)
        r = torch.randint(3, vocab_size, (5 + (i % 4),), generator=g)
        out.append((p, r))
    return out


def dp_shard(batch: Sequence, rank: int, world: int) -> list:
    """Rank ``rank``'s data-parallel share (veRL dispatches contiguous chunks to DP ranks)."""
    per = len(batch) // world
    return list(batch[rank * per:(rank + 1) * per])


def micro_batch(seqs: Sequence):
    """veRL 0.9.1's no-padding micro-batch: jagged input_ids / position_ids, right-padded response_mask."""
    from tensordict import TensorDict

    full = [torch.cat([p, r]) for p, r in seqs]
    ids = torch.nested.as_nested_tensor(full, layout=torch.jagged)
    pos = torch.nested.as_nested_tensor([torch.arange(len(f)) for f in full], layout=torch.jagged)
    max_resp = max(len(r) for _, r in seqs)
    rmask = torch.zeros(len(seqs), max_resp)
    for i, (_, r) in enumerate(seqs):
        rmask[i, : len(r)] = 1
    return TensorDict({"input_ids": ids, "position_ids": pos, "response_mask": rmask}, batch_size=[len(seqs)])


class PackedEngine:
    """The slice of veRL's FSDPEngineWithLMHead that capture hooks: ``module`` and ``forward_step``
    with its (1, nnz) packing of the jagged micro-batch (tests/unit/capture_rig.py's FakeEngine)."""

    ulysses_sequence_parallel_size = 1
    use_remove_padding = True

    def __init__(self, module):
        self.module = module

    def forward_step(self, micro_batch, loss_function, forward_only):
        ids = micro_batch["input_ids"].values().unsqueeze(0)
        pos = micro_batch["position_ids"].values().unsqueeze(0)
        with torch.no_grad():
            return self.module(input_ids=ids, position_ids=pos, use_cache=False).logits


def load_target(target_dir: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32, attn_implementation="sdpa")
    return model.eval()


def _rank_main(rank: int, world: int, port: int, target_dir: str, aux: list, out_dir: str, n_seqs: int,
               budget_mb: float) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from verl_specrollout.capture.budget import rank_budget_bytes
    from verl_specrollout.capture.verl_capture import EngineCapture
    from verl_specrollout.verl_adapter.actor_hooks import policy_shared_weights

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        model = load_target(target_dir)
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        local = {n: tuple(p.to_local().shape) if hasattr(p, "to_local") else None
                 for n, p in model.named_parameters() if "embed_tokens" in n or "lm_head" in n}
        with torch.no_grad():  # the policy moved: every rank updates its own shard
            model.lm_head.weight.add_(POLICY_DELTA)
        mine = dp_shard(global_batch(model.config.vocab_size, n_seqs), rank, world)
        engine = PackedEngine(model)
        got = []
        cap = EngineCapture(engine, aux, lambda s, step: got.append((s, step)), policy_step=lambda: 3, rank=rank)
        logits = engine.forward_step(micro_batch(mine), None, forward_only=True)
        counts = cap.end_step()
        cap.remove()
        # The same forward with this rank's share of a step budget.
        budget = rank_budget_bytes(budget_mb, world)
        got_b = []
        cap_b = EngineCapture(engine, aux, lambda s, step: got_b.append((s, step)), policy_step=lambda: 4,
                              budget_bytes=budget, rank=rank)
        engine.forward_step(micro_batch(mine), None, forward_only=True)
        counts_b = cap_b.end_step()
        cap_b.remove()
        embed, head = policy_shared_weights(model)  # collective: every rank calls it
        keep = ("input_ids", "aux", "final_hidden", "loss_mask")
        torch.save({"rank": rank, "world": world, "local_shapes": local,
                    "seqs": [(p, r) for p, r in mine], "logits": logits.detach(),
                    "samples": [{k: s[k] for k in keep} for s in got[0][0]] if got else [],
                    "policy_step": got[0][1] if got else None, "counts": counts,
                    "budget_bytes": budget, "budget_counts": counts_b,
                    "budget_samples": [{k: s[k] for k in keep} for s in got_b[0][0]] if got_b else [],
                    "embed": embed, "head": head},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(target_dir: str, aux: Sequence[int], out_dir: str, world: int = 2, n_seqs: int = 6,
           budget_mb: float = 0.05) -> list:
    """Run the FSDP2 capture + shared-weight read on ``world`` gloo ranks; returns each rank's result."""
    import torch.multiprocessing as mp

    os.makedirs(out_dir, exist_ok=True)
    mp.start_processes(_rank_main, args=(world, free_port(), target_dir, list(aux), out_dir, n_seqs, budget_mb),
                       nprocs=world, join=True, start_method="spawn")
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world)]
