"""The actor sends the policy's current embedding and lm_head to the learner."""

import pytest
import torch


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def test_returns_the_policys_current_weights():
    from verl_specrollout.verl_adapter.actor_hooks import policy_shared_weights

    model = _tiny_llama()
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)  # the policy moved
    embed, head = policy_shared_weights(model)
    assert torch.equal(embed, model.model.embed_tokens.weight.detach())
    assert torch.equal(head, model.lm_head.weight.detach())
    assert embed.data_ptr() != model.model.embed_tokens.weight.data_ptr()  # a copy, not a view


def test_flat_parameters_are_refused_with_a_clear_error():
    from verl_specrollout.verl_adapter.actor_hooks import policy_shared_weights

    model = _tiny_llama()
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().flatten())  # FSDP1-like
    with pytest.raises(RuntimeError, match="2-D weight"):
        policy_shared_weights(model)


def test_learner_trainer_uses_the_refreshed_lm_head():
    from verl_specrollout.draft.eagle3 import Eagle3Config, Eagle3Draft
    from verl_specrollout.learner.trainer import DraftTrainer

    cfg = Eagle3Config(hidden_size=32, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                       vocab_size=64, aux_layer_ids=[0, 1], target_hidden_size=32)
    emb, head = torch.randn(64, 32), torch.randn(64, 32)
    trainer = DraftTrainer(Eagle3Draft(cfg), emb, head)
    new_head = head + 1.0
    trainer.set_shared_weights(emb, new_head)
    assert torch.equal(trainer.lm_head_weight, new_head)
