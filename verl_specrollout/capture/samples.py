"""Pure functions: packed (1, nnz) batch + captured hidden states -> EAGLE-3 training samples.

No veRL, no Ray: unit-testable with a tiny HF Llama on CPU.

Layout of one sample (one sequence, response window only)::

    window = positions [r0 - context, L) of the sequence, r0 = first response token
    input_ids     int32 [W]        tokens x[s..L-1]
    aux           bf16  [W, n*H]   target residual stream after each aux layer (vLLM's aux ids)
    final_hidden  bf16  [W, H]     target final post-norm hidden state (lm_head input)
    loss_mask     uint8 [W]        1 at window position p iff x[p+1] is a masked-in response token

Why one position before the response (``context=1``): vLLM's EAGLE-3 proposer puts draft slot t
at the target's features of position t with the embedding of x[t+1] and predicts x[t+2]; the first
draft after the prompt uses the features of the *last prompt token*.  The learner scores slot t
(step j) against ``softmax(lm_head(final_hidden[t+j]))``, so the prediction of the first response
token (made at position r0 - 1) is never a label, but its features are a draft input.
Prompt context beyond that is not shipped: the draft's attention in training sees only the window
(a documented approximation; ``context`` > 1 ships more prompt positions).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

SAMPLE_KEYS = ("input_ids", "aux", "final_hidden", "loss_mask")


def sample_nbytes(sample: dict) -> int:
    return sum(int(v.numel()) * v.element_size() for v in sample.values() if isinstance(v, torch.Tensor))


def response_windows(cu_seqlens: Sequence[int], response_lengths: Sequence[int],
                     context: int = 1) -> list:
    """Per sequence ``(start, r0, end)`` in packed coordinates: window start, first response
    token, end (exclusive).  Responses are the trailing ``response_lengths[i]`` tokens (veRL
    packs prompt + response with padding removed)."""
    cu = [int(c) for c in cu_seqlens]
    out = []
    for i, rlen in enumerate(response_lengths):
        beg, end = cu[i], cu[i + 1]
        rlen = int(rlen)
        if rlen <= 0 or end - beg <= rlen:
            out.append(None)  # no response, or no prompt token before it
            continue
        r0 = end - rlen
        out.append((max(beg, r0 - context), r0, end))
    return out


def gather_index(windows: Sequence[Optional[tuple]], device=None) -> torch.Tensor:
    """Packed positions to keep (concatenated windows), for gathering inside forward hooks."""
    parts = [torch.arange(s, e, dtype=torch.long) for w in windows if w is not None for s, _, e in [w]]
    if not parts:
        return torch.zeros(0, dtype=torch.long, device=device)
    return torch.cat(parts).to(device)


def build_samples(input_ids: torch.Tensor, windows: Sequence[Optional[tuple]],
                  aux: torch.Tensor, final_hidden: torch.Tensor,
                  response_masks: Optional[Sequence[torch.Tensor]] = None,
                  gathered: bool = True, dtype: torch.dtype = torch.bfloat16,
                  policy_step: Optional[int] = None, min_tokens: int = 2) -> list:
    """Cut captured tensors into per-sequence samples.

    ``input_ids``: packed [nnz] (or [1, nnz]).  ``aux`` [N, n*H] / ``final_hidden`` [N, H]: if
    ``gathered`` they hold only the rows of :func:`gather_index` (what the hooks keep), else all
    nnz rows.  ``response_masks[i]``: the sequence's response mask over its ``end - r0`` response
    tokens (veRL's ``response_mask`` row, padding stripped); None = all ones.  A window with
    ``s == r0`` is a segment inside a response (a budget cut, capture/budget.py): every position
    is a response token and ``response_masks[i]`` starts at ``s``.
    """
    ids = input_ids.reshape(-1)
    if aux.dim() == 3:
        aux = aux.reshape(-1, aux.shape[-1])
    if final_hidden.dim() == 3:
        final_hidden = final_hidden.reshape(-1, final_hidden.shape[-1])
    out, row = [], 0
    for i, w in enumerate(windows):
        if w is None:
            continue
        s, r0, e = w
        n = e - s
        if gathered:
            a, f = aux[row:row + n], final_hidden[row:row + n]
            row += n
        else:
            a, f = aux[s:e], final_hidden[s:e]
        if n < min_tokens:
            continue
        # loss_mask[p] = response_mask of token x[p+1] (window-local p); last position: 0
        lm = torch.zeros(n, dtype=torch.uint8)
        rm = torch.ones(e - r0, dtype=torch.uint8)
        if response_masks is not None and response_masks[i] is not None:
            rmi = response_masks[i].reshape(-1)[: e - r0].to(torch.uint8).cpu()
            rm[: rmi.numel()] = rmi
        off = r0 - s  # window-local index of the first response token (0: a segment inside the response)
        lm[max(off - 1, 0): n - 1] = rm if off >= 1 else rm[1:]
        if int(lm.sum()) == 0:
            continue
        # clone: each sample must own a compact storage.  Slices of the captured batch are views,
        # and pickling a view (ray.put) serialises the WHOLE underlying storage, once per sample
        # (64 samples of a batch: ~60x the bytes); a kept view would also pin the whole batch.
        sample = {
            "input_ids": ids[s:e].detach().to("cpu", torch.int32).clone(),
            "aux": a.detach().to("cpu", dtype).clone(),
            "final_hidden": f.detach().to("cpu", dtype).clone(),
            "loss_mask": lm,
        }
        if policy_step is not None:
            sample["policy_step"] = torch.tensor(int(policy_step))
        out.append(sample)
    return out


def sample_tokens(sample: dict) -> int:
    return int(sample["input_ids"].numel())


def cut_sample(sample: dict, start: int, n: int) -> Optional[dict]:
    """Positions ``[start, start + n)`` of a sample (consecutive: the learner's unroll needs them),
    or None when no masked-in label is left.  A cut before the sample's end gives the new last
    position loss 0, as every window's last position has (its next token is not shipped)."""
    total = sample_tokens(sample)
    if start == 0 and n >= total:
        return sample
    if n < 2:
        return None
    out = {k: (v[start:start + n].clone() if k in SAMPLE_KEYS else v) for k, v in sample.items()}
    if start + n < total:
        out["loss_mask"][-1] = 0
    return out if int(out["loss_mask"].sum()) else None
