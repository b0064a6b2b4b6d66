"""What the capture tests share: a tiny HF Llama and a stand-in for veRL's FSDP engine."""

import torch


def tiny_llama(**overrides):
    """3 layers, hidden 32, vocab 64, seeded: small enough for every capture test."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128, **overrides)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).eval()


class FakeEngine:
    """FSDPEngineWithLMHead.forward_step's packing: (1, nnz) from the jagged tensors. ``fail``: an
    exception the policy's own forward raises; ``calls``: forwards run."""

    ulysses_sequence_parallel_size = 1
    use_remove_padding = True

    def __init__(self, module):
        self.module = module
        self.calls = 0
        self.fail = None

    def forward_step(self, micro_batch, loss_function, forward_only):
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        ids = micro_batch["input_ids"].values().unsqueeze(0)
        pos = micro_batch["position_ids"].values()
        pos = (pos if pos.dim() == 1 else pos[:, 0]).unsqueeze(0)  # a text model reads one of 3 rows
        with torch.no_grad():
            return self.module(input_ids=ids, position_ids=pos, use_cache=False).logits
