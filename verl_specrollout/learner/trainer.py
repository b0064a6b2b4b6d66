"""Online EAGLE-3 training step: feature regression + soft cross-entropy (FastGRPO's recipe).

Loss per unroll step j (training-time test, vLLM's drafting alignment, see draft/eagle3.py):

    L_j = w_feat * SmoothL1(norm(draft_hidden_j[t]), h_T[t+j]) + w_ce * CE(softmax(lm_head(h_T[t+j])),
                                                                        lm_head(norm(draft_hidden_j[t])))

``h_T`` is the target's final post-norm hidden state shipped by capture; the target distribution
is computed *here* with a frozen copy of the target's ``lm_head`` (full-vocab logits are never
shipped).  The draft's post-norm feature is what vLLM feeds to the (shared) lm_head, so regressing
it onto ``h_T`` is the EAGLE feature loss.  Only the draft's own parameters get gradients; the
embedding / lm_head copies are frozen buffers and the policy is never touched.

A head with a reduced draft vocabulary (``draft_vocab_size`` < the target's, with ``d2t``) has its
own lm_head and is scored on its own vocabulary: the target's logits at the draft's target ids
(``arange(draft_vocab) + d2t``), softmaxed over those ids, as speculators trains EAGLE-3 heads
(see ``draft.eagle3.soft_targets``). Top-1 agreement compares target ids, as vLLM's verification does.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from verl_specrollout.draft.eagle3 import Eagle3Draft, check_target_vocab, soft_targets, top1_agrees


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
        logits, hiddens = self.draft(batch["aux"], batch["input_ids"], embed_weight=self.embed_weight,
                                     lm_head_weight=self.lm_head_weight, attention_mask=batch["attention_mask"],
                                     num_steps=num_steps, return_hidden=True)
        T = batch["input_ids"].shape[1]
        ids = self.draft.target_ids()  # None unless the draft vocabulary is reduced
        total, wsum, stats = 0.0, 0.0, {}
        for j in range(1, num_steps + 1):
            if j >= T:
                break
            pred = logits[j - 1][:, : T - j].float()
            h_t = batch["final_hidden"][:, j:].float()
            m = batch["loss_mask"][:, j:]
            denom = m.sum().clamp_min(1.0)
            with torch.no_grad():
                t_logits = F.linear(h_t, self.lm_head_weight)  # full target vocabulary
                p_t = soft_targets(t_logits, ids)
            ce = -(p_t * torch.log_softmax(pred, -1)).sum(-1)
            feat = self.draft.norm(hiddens[j - 1][:, : T - j]).float()
            fl = F.smooth_l1_loss(feat, h_t, reduction="none").mean(-1)
            ce_l = (ce * m).sum() / denom
            f_l = (fl * m).sum() / denom
            step_loss = self.feature_loss_weight * f_l + self.soft_ce_loss_weight * ce_l
            w = self.step_decay ** (j - 1)
            total, wsum = total + w * step_loss, wsum + w
            with torch.no_grad():
                agree = (top1_agrees(pred, t_logits, ids).float() * m).sum()
            stats[f"step{j}_top1"] = float(agree / denom)
            stats[f"step{j}_ce"] = float(ce_l.detach())
            stats[f"step{j}_feat"] = float(f_l.detach())
            stats[f"step{j}_tokens"] = float(m.sum())
        return total / max(wsum, 1e-9), stats

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
