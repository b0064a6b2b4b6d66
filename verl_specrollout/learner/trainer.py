"""Online EAGLE-3 training step: feature regression + soft cross-entropy (FastGRPO's recipe).

The loss itself is ``draft.eagle3.eagle3_loss`` (the one the testbed's head is trained with), fed
the target's final post-norm hidden state ``h_T`` shipped by capture: the target distribution is
computed there with a frozen copy of the target's ``lm_head`` (full-vocab logits are never
shipped). Only the draft's own parameters get gradients; the embedding / lm_head copies are frozen
buffers and the policy is never touched.
"""

from __future__ import annotations

from typing import Optional

import torch

from verl_specrollout.draft.eagle3 import Eagle3Draft, check_target_vocab, eagle3_loss


def collate(samples: list, device="cpu", dtype=torch.float32) -> dict:
    T = max(int(s["input_ids"].numel()) for s in samples)
    B = len(samples)
    H = samples[0]["final_hidden"].shape[-1]
    A = samples[0]["aux"].shape[-1]
    ids = torch.zeros(B, T, dtype=torch.long)
    am = torch.zeros(B, T, dtype=torch.bool)
    lm = torch.zeros(B, T)
    aux = torch.zeros(B, T, A, dtype=dtype)
    fin = torch.zeros(B, T, H, dtype=dtype)
    for b, s in enumerate(samples):
        n = int(s["input_ids"].numel())
        ids[b, :n] = s["input_ids"].long()
        am[b, :n] = True
        lm[b, :n] = s["loss_mask"].float()
        aux[b, :n] = s["aux"].to(dtype)
        fin[b, :n] = s["final_hidden"].to(dtype)
    return {k: v.to(device) for k, v in
            dict(input_ids=ids, attention_mask=am, loss_mask=lm, aux=aux, final_hidden=fin).items()}


class DraftTrainer:
    def __init__(self, draft: Eagle3Draft, embed_weight: torch.Tensor, lm_head_weight: torch.Tensor, *,
                 lr: float = 1e-4, feature_loss_weight: float = 2.0, soft_ce_loss_weight: float = 0.1,
                 num_steps: int = 3, step_decay: float = 0.8, batch_size: int = 16,
                 weight_decay: float = 0.0, max_grad_norm: float = 1.0, device="cpu"):
        self.device = torch.device(device)
        self.draft = draft.to(self.device).train()
        check_target_vocab(draft, lm_head_weight.shape[0], "the target's lm_head")
        # frozen copies: never parameters of anything that is optimised
        self.embed_weight = embed_weight.detach().to(self.device, torch.float32).clone()
        self.lm_head_weight = lm_head_weight.detach().to(self.device, torch.float32).clone()
        self.feature_loss_weight = feature_loss_weight
        self.soft_ce_loss_weight = soft_ce_loss_weight
        self.num_steps = num_steps
        self.step_decay = step_decay
        self.batch_size = batch_size
        self.max_grad_norm = max_grad_norm
        self.opt = torch.optim.AdamW(self.draft.parameters(), lr=lr, weight_decay=weight_decay,
                                     betas=(0.9, 0.98))
        self.step = 0

    def set_shared_weights(self, embed_weight=None, lm_head_weight=None) -> None:
        """Refresh the frozen embedding / lm_head copies (the policy moved them)."""
        if embed_weight is not None:
            self.embed_weight = embed_weight.detach().to(self.device, torch.float32).clone()
        if lm_head_weight is not None:
            self.lm_head_weight = lm_head_weight.detach().to(self.device, torch.float32).clone()

    def _losses(self, batch: dict, num_steps: int):
        """The one EAGLE-3 loss (draft/eagle3.py) on a collated batch, with this trainer's weights."""
        return eagle3_loss(self.draft, batch["aux"], batch["input_ids"], target_hidden=batch["final_hidden"],
                           embed_weight=self.embed_weight, lm_head_weight=self.lm_head_weight,
                           attention_mask=batch["attention_mask"], loss_mask=batch["loss_mask"],
                           num_steps=num_steps, step_decay=self.step_decay,
                           soft_ce_weight=self.soft_ce_loss_weight, feature_weight=self.feature_loss_weight)

    def train_step(self, samples: list) -> dict:
        batch = collate(samples, self.device)
        self.draft.train()
        loss, stats = self._losses(batch, self.num_steps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.draft.parameters(), self.max_grad_norm)
        self.opt.step()
        self.step += 1
        stats.update(loss=float(loss.detach()), grad_norm=float(gn), draft_step=self.step)
        return stats

    @torch.no_grad()
    def evaluate(self, samples: list, num_steps: Optional[int] = None) -> dict:
        """Top-1 agreement with the target (argmax of lm_head(h_T), in target ids) on held-out samples."""
        if not samples:
            return {}
        self.draft.eval()
        agg, tok = {}, {}
        for i in range(0, len(samples), self.batch_size):
            batch = collate(samples[i:i + self.batch_size], self.device)
            loss, st = self._losses(batch, num_steps or self.num_steps)
            for k, v in st.items():
                if k.endswith("_tokens"):
                    continue
                j = k.split("_")[0]
                n = st[f"{j}_tokens"]
                agg[k] = agg.get(k, 0.0) + v * n
                tok[k] = tok.get(k, 0.0) + n
        self.draft.train()
        return {f"eval_{k}": agg[k] / max(tok[k], 1.0) for k in agg}

    def state_dict(self) -> dict:
        return {"draft": self.draft.state_dict(), "opt": self.opt.state_dict(), "step": self.step}

    def load_state_dict(self, sd: dict) -> None:
        self.draft.load_state_dict(sd["draft"])
        self.opt.load_state_dict(sd["opt"])
        self.step = int(sd["step"])
