import pytest
import torch

from verl_specrollout.draft.eagle3 import Eagle3Config, Eagle3Draft, eagle3_loss
from verl_specrollout.learner.trainer import DraftTrainer, collate


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


def _toy_trainer(num_steps, feature_loss_weight=2.0, soft_ce_loss_weight=0.1):
    torch.manual_seed(0)
    cfg = Eagle3Config(hidden_size=32, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                       vocab_size=64, aux_layer_ids=[0, 1])
    return DraftTrainer(Eagle3Draft(cfg), torch.randn(64, 32), torch.randn(64, 32), num_steps=num_steps,
                        feature_loss_weight=feature_loss_weight, soft_ce_loss_weight=soft_ce_loss_weight)


def test_the_learner_trains_on_the_one_eagle3_loss():
    """The loss a train step reports is eagle3_loss's on the same batch with the trainer's weights
    (the testbed's head is trained with the same function)."""
    tr = _toy_trainer(num_steps=3, feature_loss_weight=1.5, soft_ce_loss_weight=0.3)
    data = _samples(4)
    b = collate(data)
    want, want_stats = eagle3_loss(tr.draft, b["aux"], b["input_ids"], target_hidden=b["final_hidden"],
                                   embed_weight=tr.embed_weight, lm_head_weight=tr.lm_head_weight,
                                   attention_mask=b["attention_mask"], loss_mask=b["loss_mask"], num_steps=3,
                                   step_decay=tr.step_decay, soft_ce_weight=0.3, feature_weight=1.5)
    got = tr.train_step(data)
    assert got["loss"] == float(want.detach())
    assert {k: got[k] for k in want_stats} == want_stats


def test_eagle3_loss_one_step_is_soft_ce_plus_feature_regression():
    """Step 1 against an independent writing of the formula: torch's cross_entropy with
    probability targets and smooth_l1 on the draft's post-norm feature, over the masked positions."""
    import torch.nn.functional as F

    tr = _toy_trainer(num_steps=1)
    b = collate(_samples(3, T=9, seed=4))
    b["loss_mask"][1, 4:] = 0  # a masked tail must not count
    loss, _ = eagle3_loss(tr.draft, b["aux"], b["input_ids"], target_hidden=b["final_hidden"],
                          embed_weight=tr.embed_weight, lm_head_weight=tr.lm_head_weight,
                          attention_mask=b["attention_mask"], loss_mask=b["loss_mask"], num_steps=1,
                          soft_ce_weight=0.1, feature_weight=2.0)
    (logits,), (hidden,) = tr.draft(b["aux"], b["input_ids"], embed_weight=tr.embed_weight,
                                    lm_head_weight=tr.lm_head_weight, attention_mask=b["attention_mask"],
                                    num_steps=1, return_hidden=True)
    keep = b["loss_mask"][:, 1:].bool()
    h_t = b["final_hidden"][:, 1:][keep]
    ce = F.cross_entropy(logits[:, :-1][keep], torch.softmax(F.linear(h_t, tr.lm_head_weight), -1))
    feat = F.smooth_l1_loss(tr.draft.norm(hidden[:, :-1][keep]), h_t)
    torch.testing.assert_close(loss, 0.1 * ce + 2.0 * feat)


def test_eagle3_loss_refuses_ambiguous_targets():
    tr = _toy_trainer(num_steps=1)
    b = collate(_samples(1))
    with pytest.raises(ValueError, match="exactly one of"):
        eagle3_loss(tr.draft, b["aux"], b["input_ids"], lm_head_weight=tr.lm_head_weight)
    with pytest.raises(ValueError, match="feature term needs target_hidden"):
        eagle3_loss(tr.draft, b["aux"], b["input_ids"], torch.randn(1, 12, 64), embed_weight=tr.embed_weight,
                    lm_head_weight=tr.lm_head_weight, feature_weight=1.0)
