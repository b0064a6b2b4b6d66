"""Forward hooks that keep the EAGLE-3 features during a forward the trainer already runs.

Cost: no extra forward, no logits; per hooked module one ``index_select`` of the kept rows,
``.detach().to(bf16)``.  The rows to keep (response windows) are armed before the forward.

Aux layer id ``L`` (vLLM's ``eagle_aux_hidden_state_layer_ids``) is the residual stream *entering*
decoder layer ``L`` = the output of HF layer ``L-1`` (``L = 0``: the embedding output).  The final
feature is the output of the final norm (input of ``lm_head``).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from verl_specrollout import compat



def unwrap_model(model):
    # FSDP1 wraps in _fsdp_wrapped_module; DDP/compile use .module / ._orig_mod
    for attr in ("_fsdp_wrapped_module", "_orig_mod", "module"):
        while hasattr(model, attr) and isinstance(getattr(model, attr), torch.nn.Module):
            model = getattr(model, attr)
    return model


def find_decoder(model) -> torch.nn.Module:
    m = unwrap_model(model)
    for attr in compat.HF_DECODER_ATTRS:
        inner = getattr(m, attr, None)
        if inner is not None and hasattr(unwrap_model(inner), compat.HF_LAYERS_ATTR):
            return unwrap_model(inner)
    if hasattr(m, compat.HF_LAYERS_ATTR):
        return m
    raise ValueError(f"cannot find decoder layers in {type(m).__name__}; capture supports HF *ForCausalLM models")


class HiddenStateCapture:
    """Register hooks once; per forward: ``arm(index)`` -> forward -> ``collect()``.

    ``index`` are the packed positions (dim 1 of the (1, nnz) activations) to keep; None keeps
    everything (tests).  Hooks are inert while not armed, so other forwards (training steps,
    the ref model sharing the module) cost nothing and capture nothing.
    """

    def __init__(self, model: torch.nn.Module, aux_layer_ids: Sequence[int], dtype=torch.bfloat16):
        self.aux_layer_ids = [int(i) for i in aux_layer_ids]
        self.dtype = dtype
        dec = find_decoder(model)
        layers = getattr(dec, compat.HF_LAYERS_ATTR)
        n = len(layers)
        for L in self.aux_layer_ids:
            if not 0 <= L < n:
                raise ValueError(f"aux layer id {L} out of range for a {n}-layer target")
        self._handles = []
        self._index: Optional[torch.Tensor] = None
        self._padded_shape: Optional[tuple] = None
        self._armed = False
        self._error: Optional[Exception] = None
        self._aux: dict = {}
        self._final: Optional[torch.Tensor] = None
        for L in self.aux_layer_ids:
            mod = getattr(dec, compat.HF_EMBED_ATTR) if L == 0 else layers[L - 1]
            self._handles.append(mod.register_forward_hook(self._make_hook(L)))
        self._handles.append(getattr(dec, compat.HF_FINAL_NORM_ATTR).register_forward_hook(self._final_hook))

    def _keep(self, out) -> torch.Tensor:
        h = out[0] if isinstance(out, (tuple, list)) else out
        h = h.detach()
        if h.dim() == 3:  # (1, nnz, H) packed, or (B, T, H) padded / when index is None
            if self._index is not None:
                if self._padded_shape is None and h.shape[0] != 1:
                    raise RuntimeError(f"capture expects packed (1, nnz) activations (veRL remove-padding), "
                                       f"got {tuple(h.shape[:2])}")
                if self._padded_shape is not None and tuple(h.shape[:2]) != self._padded_shape:
                    raise RuntimeError(f"capture expected padded activations of shape {self._padded_shape}, "
                                       f"got {tuple(h.shape[:2])}")
                h = h.reshape(-1, h.shape[-1]).index_select(0, self._index.to(h.device))
        return h.to(self.dtype)

    def _store(self, slot, out) -> None:
        # A hook runs inside the policy's forward: an error here must not reach it.  Keep the
        # error for collect() and stop capturing for the rest of this forward.
        try:
            if slot is None:
                self._final = self._keep(out)
            else:
                self._aux[slot] = self._keep(out)
        except Exception as exc:
            self._error = exc
            self._armed = False

    def _make_hook(self, L):
        def hook(module, args, out):
            if self._armed:
                self._store(L, out)
        return hook

    def _final_hook(self, module, args, out):
        if self._armed:
            self._store(None, out)

    def arm(self, index: Optional[torch.Tensor] = None, padded_shape: Optional[tuple] = None) -> None:
        """``padded_shape=(B, T)``: the forward runs the padded (B, T) layout and ``index`` holds
        flat ``b * T + t`` positions (see verl_capture.padded_index); None: packed (1, nnz)."""
        self._index = index
        self._padded_shape = tuple(padded_shape) if padded_shape is not None else None
        self._aux, self._final, self._error = {}, None, None
        self._armed = True

    def disarm(self) -> None:
        self._armed = False
        self._index = None

    def collect(self):
        """-> (aux [N, n*H], final [N, H]) on the activations' device, then disarms."""
        self._armed = False
        if self._error is not None:
            error, self._error = self._error, None
            self._aux, self._final, self._index = {}, None, None
            raise RuntimeError(f"capture hook failed during the forward: {error!r}") from error
        if self._final is None or len(self._aux) != len(self.aux_layer_ids):
            raise RuntimeError("capture armed but the hooked modules did not run (gradient checkpointing "
                               "re-entry or a model without the expected modules?)")
        aux = torch.cat([self._aux[L] for L in self.aux_layer_ids], dim=-1)
        final = self._final
        self._aux, self._final, self._index = {}, None, None
        return aux, final

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
