"""The testbed's toy part: a random tiny Llama target (HF format) + an EAGLE-3 head, for fast
learner and reload tests that need no tokenizer and no task.

No tokenizer, no task. vLLM runs it with ``skip_tokenizer_init=True`` and
token-id prompts.  Random targets decode greedily into short loops, which a draft learns
in a few hundred steps, so acceptance is high and a broken reload is obvious.
"""

from __future__ import annotations

import os

import torch

TOY_ARCH = dict(vocab_size=256, hidden_size=128, num_hidden_layers=3, num_attention_heads=2,
                num_key_value_heads=2, intermediate_size=256, max_position_embeddings=1024)
TOY_AUX = [1, 2]


def toy_target_config(**overrides):
    from transformers import LlamaConfig

    kw = dict(TOY_ARCH, rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
              pad_token_id=0, head_dim=TOY_ARCH["hidden_size"] // TOY_ARCH["num_attention_heads"],
              rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    kw.update(overrides)
    return LlamaConfig(**kw)


def task_perm(seed: int, vocab: int = TOY_ARCH["vocab_size"]) -> torch.Tensor:
    """Token map of a toy task: a response continues x[t+1] = perm[x[t]] (ids 0-2 fixed)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    return torch.cat([torch.arange(3), torch.randperm(vocab - 3, generator=g) + 3])


def task_batch(n: int, perm: torch.Tensor, prompt_len: int = 8, resp_len: int = 40, g=None) -> torch.Tensor:
    ids = torch.empty(n, prompt_len + resp_len, dtype=torch.long)
    ids[:, :prompt_len] = torch.randint(3, len(perm), (n, prompt_len), generator=g)
    for t in range(prompt_len, prompt_len + resp_len):
        ids[:, t] = perm[ids[:, t - 1]]
    return ids


def sft(model, perm, steps: int, lr: float = 3e-3, batch: int = 16, seed: int = 0, opt=None):
    """Supervised steps of ``model`` on the task ``perm`` (loss on response tokens)."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    opt = opt or torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98))
    loss = None
    for _ in range(steps):
        ids = task_batch(batch, perm, g=g)
        labels = ids.clone()
        labels[:, :8] = -100
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach()) if loss is not None else None


def build_toy_target(out_dir: str, seed: int = 0, init_std: float = 0.02, task_seed: int = 0,
                     sft_steps: int = 150, **overrides) -> str:
    """Tiny Llama trained for ``sft_steps`` on task ``task_perm(task_seed)`` (0 = random weights)."""
    from transformers import LlamaForCausalLM

    if os.path.isfile(os.path.join(out_dir, "config.json")):
        return out_dir
    torch.manual_seed(seed)
    cfg = toy_target_config(initializer_range=init_std, **overrides)
    cfg._attn_implementation = "sdpa"
    model = LlamaForCausalLM(cfg).float()
    if sft_steps:
        sft(model, task_perm(task_seed), sft_steps, seed=seed)
    model.eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def toy_prompts(n: int, length: int = 8, vocab: int = 256, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (length,), generator=g).tolist() for _ in range(n)]


@torch.no_grad()
def greedy_rollouts(model, prompts: list, max_new_tokens: int = 48, temperature: float = 0.0,
                    seed: int = 0) -> list:
    """(prompt_ids, response_ids) pairs sampled from an HF causal LM (no EOS stopping)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    ids = torch.tensor(prompts)
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids).logits[:, -1].float()
        if temperature > 0:
            nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=g)
        else:
            nxt = logits.argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    P = len(prompts[0])
    for row in ids.tolist():
        out.append((row[:P], row[P:]))
    return out


def capture_samples(model, aux_layer_ids, rollouts: list, policy_step=None, context: int = 1) -> list:
    """The actor-side path on a plain HF model: pack rollouts as veRL does ((1, nnz) + restarting
    position_ids), run ONE forward with capture hooks armed, cut samples."""
    from verl_specrollout.capture.hooks import HiddenStateCapture
    from verl_specrollout.capture.samples import build_samples, gather_index, response_windows

    seqs = [p + r for p, r in rollouts]
    cu = [0]
    for s in seqs:
        cu.append(cu[-1] + len(s))
    ids = torch.tensor([t for s in seqs for t in s])[None]
    pos = torch.cat([torch.arange(len(s)) for s in seqs])[None]
    windows = response_windows(cu, [len(r) for _, r in rollouts], context)
    cap = HiddenStateCapture(model, aux_layer_ids)
    try:
        cap.arm(gather_index(windows))
        with torch.no_grad():
            model(input_ids=ids, position_ids=pos, use_cache=False, logits_to_keep=1)
        aux, final = cap.collect()
    finally:
        cap.remove()
    return build_samples(ids[0], windows, aux, final, None, gathered=True, policy_step=policy_step)


def build_toy_draft(target_dir: str, out_dir: str, steps: int = 200, n_prompts: int = 128,
                    max_new_tokens: int = 40, lr: float = 5e-3, seed: int = 0, num_steps: int = 2) -> dict:
    """Train an EAGLE-3 head for the toy target with the online learner's own code path
    (capture -> buffer -> trainer -> publisher format).  Returns held-out stats."""
    from transformers import AutoModelForCausalLM

    from verl_specrollout.draft.eagle3 import save_vllm_checkpoint

    from verl_specrollout.learner.actor import SpecLearner

    m = AutoModelForCausalLM.from_pretrained(target_dir).eval()
    ro = greedy_rollouts(m, toy_prompts(n_prompts, seed=seed + 1), max_new_tokens)
    samples = capture_samples(m, TOY_AUX, ro, policy_step=0)
    pub = os.path.join(os.path.dirname(os.path.abspath(out_dir)), ".toy_pub_" + os.path.basename(out_dir))
    L = SpecLearner({"publish_dir": pub, "lr": lr, "buffer_bytes": 64 << 20}, target_dir, TOY_AUX,
                    batch_size=16, num_steps=num_steps, save_state_on_publish=False, seed=seed)
    L.add_batch(samples, 0)
    L.train(steps)
    st = L.stats()
    save_vllm_checkpoint(L.trainer.draft, out_dir, L.target_config)
    return st


def toy_samples(n, T=12, seed=0):
    """Captured-sample lookalikes for the toy target (hidden 128, two aux layers, vocab 256)."""
    H, V = TOY_ARCH["hidden_size"], TOY_ARCH["vocab_size"]
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, V, (T,), generator=g, dtype=torch.int32),
             "aux": torch.randn(T, len(TOY_AUX) * H, generator=g).bfloat16(),
             "final_hidden": torch.randn(T, H, generator=g).bfloat16(),
             "loss_mask": torch.tensor([1] * (T - 1) + [0], dtype=torch.uint8)} for _ in range(n)]


TOY_VERSION = "2"


def get_toy(cache_dir: str = None) -> dict:
    """Cached toy target + trained EAGLE-3 head (built once, ~1-3 min on 2 busy cores).
    Cache: beside the testbed's sizes, ``<cache_root()>/toy-v<TOY_VERSION>``; built in a temp dir
    and renamed into place, so concurrent builders never see half a toy."""
    import shutil
    import tempfile

    from verl_specrollout.testing.testbed.cache import cache_root

    root = cache_dir or os.path.join(cache_root(), f"toy-v{TOY_VERSION}")
    out = {"root": root, "target": os.path.join(root, "target"), "draft": os.path.join(root, "draft"),
           "aux_layer_ids": list(TOY_AUX)}
    if os.path.isfile(os.path.join(out["draft"], "config.json")):
        return out
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-toy-", dir=parent)
    try:
        build_toy_target(os.path.join(tmp, "target"))
        build_toy_draft(os.path.join(tmp, "target"), os.path.join(tmp, "draft"))
        shutil.rmtree(os.path.join(tmp, ".toy_pub_draft"), ignore_errors=True)
        try:
            os.rename(tmp, root)
        except OSError:  # someone else won the race
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
