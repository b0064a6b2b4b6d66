import torch

from verl_specrollout.draft.eagle3 import Eagle3Config, Eagle3Draft
from verl_specrollout.learner.trainer import DraftTrainer


def _samples(n, T=12, H=32, n_aux=2, V=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        out.append({"input_ids": torch.randint(0, V, (T,), generator=g, dtype=torch.int32),
                    "aux": torch.randn(T, n_aux * H, generator=g).bfloat16(),
                    "final_hidden": torch.randn(T, H, generator=g).bfloat16(),
                    "loss_mask": torch.tensor([1] * (T - 1) + [0], dtype=torch.uint8)})
    return out


def test_trains_only_draft_and_loss_drops():
    torch.manual_seed(0)
    cfg = Eagle3Config(hidden_size=32, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                       vocab_size=64, aux_layer_ids=[0, 1])
    emb = torch.randn(64, 32)
    head = torch.randn(64, 32)
    emb0, head0 = emb.clone(), head.clone()
    tr = DraftTrainer(Eagle3Draft(cfg), emb, head, lr=3e-3, num_steps=2, batch_size=4)
    data = _samples(4)
    first = tr.train_step(data)["loss"]
    for _ in range(30):
        last = tr.train_step(data)
    assert last["loss"] < first
    assert tr.step == 31 and "step2_top1" in last
    # frozen shared weights untouched, and not in the optimizer
    assert torch.equal(emb, emb0) and torch.equal(head, head0)
    opt_ids = {id(p) for g in tr.opt.param_groups for p in g["params"]}
    assert id(tr.lm_head_weight) not in opt_ids and id(tr.embed_weight) not in opt_ids
    ev = tr.evaluate(data)
    assert 0.0 <= ev["eval_step1_top1"] <= 1.0
