"""Train the testbed: tokenizer, a tiny Llama target, an EAGLE-3 head and a small draft LM.

All on CPU, deterministic (fixed seeds, ``torch.set_num_threads``), driven by a recipe dict
whose hash names the cache directory (see :mod:`.cache`).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time

import torch

from verl_specrollout.progress import Progress

from . import task as task_mod
from .tokenizer import build_tokenizer

# Bump when the code that produces artifacts changes: invalidates every cached testbed.
RECIPE_VERSION = "1"

RECIPES = {
    "tiny": {
        "target": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=4, intermediate_size=512),
        "target_train": dict(steps=800, batch_size=32, lr=2e-3, warmup=40, weight_decay=0.01),
        "aux_layer_ids": [1, 2, 3],
        "eagle3_train": dict(steps=400, batch_size=32, lr=2e-3, warmup=20, num_steps=3),
        "draft_lm": dict(hidden_size=256, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=4, intermediate_size=512),
        "draft_lm_train": dict(steps=300, batch_size=32, lr=3e-3, warmup=20),
        "n_train_examples": 20000,
        "data": dict(n_train=2048, n_test=256),
    },
    "medium": {
        "target": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                       num_key_value_heads=8, intermediate_size=1536),
        "target_train": dict(steps=300, batch_size=32, lr=2e-3, warmup=30, weight_decay=0.01),
        "aux_layer_ids": [1, 3, 5],
        "eagle3_train": dict(steps=200, batch_size=32, lr=2e-3, warmup=20, num_steps=3),
        "draft_lm": dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, intermediate_size=768),
        "draft_lm_train": dict(steps=150, batch_size=32, lr=3e-3, warmup=20),
        "n_train_examples": 30000,
        "data": dict(n_train=4096, n_test=512),
    },
}
COMMON = dict(seed=1234, vocab_pad_to=128, max_position_embeddings=1024, rope_theta=10000.0,
              rms_norm_eps=1e-6, threads=2)

# Sizes made from a trained one by function-preserving expansion (expand.py): the base testbed's
# function (same logits, same task accuracy, same draft acceptance) at a bigger model's matrix
# work, so a decode step costs many draft passes and is memory-bound at small B, as on a GPU.
EXPANDED = {
    # medium (20.6 M) -> 157 M: 18 identity layers spread between the 6 trained ones, width 512 -> 640,
    # 8 -> 10 heads, MLP 1536 -> 2560; the EAGLE-3 head widens with it (one layer of the new target).
    # Served in bfloat16 a B=1 decode step costs ~20 draft passes here (benchmarks/regime.py).
    "regime": {"base": "medium",
               "expand": dict(hidden_size=640, num_attention_heads=10, num_key_value_heads=10,
                              intermediate_size=2560, num_hidden_layers=24, new_layers="spread", seed=0)},
    # tiny (2.7 M) -> the same 640-wide, 24-layer shape: the regime's step costs with the tiny
    # testbed's function (a sharper target, mean max probability 0.75 vs 0.63, so drafts accept
    # more). Seconds on top of the tiny build, which the main job makes anyway: the quickstart's
    # rollout part runs on it.
    "regime-tiny": {"base": "tiny",
                    "expand": dict(hidden_size=640, num_attention_heads=10, num_key_value_heads=10,
                                   intermediate_size=2560, num_hidden_layers=24, new_layers="spread", seed=0)},
}
SIZES = sorted(RECIPES) + sorted(EXPANDED)


def get_recipe(size: str) -> dict:
    if size in EXPANDED:
        return _expanded_recipe(size)
    if size not in RECIPES:
        raise ValueError(f"unknown testbed size {size!r}; choose from {SIZES}")
    # A deep copy: callers may edit the nested dicts (a test bumps target_train.steps), and an edit
    # of the shared table would silently move every later build to another cache dir.
    return copy.deepcopy({"version": RECIPE_VERSION, "size": size, **COMMON, **RECIPES[size]})


def _expanded_recipe(size: str) -> dict:
    """The base's whole recipe is part of this one, so a new base also names a new cache dir."""
    from .expand import ExpandShape, layer_plan

    spec = EXPANDED[size]
    base = get_recipe(spec["base"])
    shape = ExpandShape.from_dict(spec["expand"])
    plan = layer_plan(base["target"]["num_hidden_layers"], shape.num_hidden_layers, shape.new_layers)
    return {"version": RECIPE_VERSION, "size": size, "base_recipe": base, "expand": dict(spec["expand"]),
            "aux_layer_ids": [plan.aux_id(i) for i in base["aux_layer_ids"]], "threads": base["threads"]}


def _log(msg):
    print(f"[testbed] {msg}", flush=True)


# Seconds between progress lines of a training loop (the medium build's target loop runs ~18 min).
PROGRESS_EVERY_S = 15.0


def _progress(what: str, total: int, unit: str = "step") -> Progress:
    """i/N, elapsed, ETA of one training loop; printing never touches the artifacts or the recipe hash."""
    return Progress(total, f"testbed {what}", every_s=PROGRESS_EVERY_S, unit=unit)


def _seed_all(seed):
    random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- data

def encode_examples(tok, examples):
    """-> list of (ids, n_prompt) with ids = chat prompt + response + eos."""
    out = []
    for ex in examples:
        p = tok.apply_chat_template(task_mod.prompt_messages(ex), add_generation_prompt=True,
                                    tokenize=False)
        pids = tok.encode(p, add_special_tokens=False)
        rids = tok.encode(ex.solution, add_special_tokens=False) + [tok.eos_token_id]
        out.append((pids + rids, len(pids)))
    return out


def make_batch(encoded, idx, pad_id):
    seqs = [encoded[i] for i in idx]
    T = max(len(s) for s, _ in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    am = torch.zeros(len(seqs), T, dtype=torch.long)
    resp = torch.zeros(len(seqs), T)  # positions p whose *next* token is a response token
    for b, (s, npr) in enumerate(seqs):
        ids[b, : len(s)] = torch.tensor(s)
        am[b, : len(s)] = 1
        resp[b, npr - 1: len(s) - 1] = 1.0
    return ids, am, resp


def _lr(step, total, base, warmup):
    if step < warmup:
        return base * (step + 1) / warmup
    prog = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))


def _batches(lengths, bs, steps, seed):
    """Length-bucketed batches (little padding), batch order shuffled, deterministic."""
    g = torch.Generator().manual_seed(seed)
    n = len(lengths)
    while True:
        perm = torch.randperm(n, generator=g).tolist()
        # sort within large windows so batches are length-homogeneous but still varied
        win = bs * 50
        order = []
        for s in range(0, n, win):
            order += sorted(perm[s:s + win], key=lambda i: lengths[i])
        batches = [order[s:s + bs] for s in range(0, n - bs + 1, bs)]
        for b in torch.randperm(len(batches), generator=g).tolist():
            if steps <= 0:
                return
            steps -= 1
            yield batches[b]


# ----------------------------------------------------------------------------- models

def llama_config(recipe, arch, vocab_size, tok):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, max_position_embeddings=recipe["max_position_embeddings"],
        rms_norm_eps=recipe["rms_norm_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": recipe["rope_theta"]},
        head_dim=arch["hidden_size"] // arch["num_attention_heads"],
        tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, hidden_act="silu", attention_bias=False, mlp_bias=False,
        **arch)


def _new_llama(cfg):
    from transformers import LlamaForCausalLM

    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).float()


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def train_target(recipe, tok, encoded, cfg):
    tr = recipe["target_train"]
    _seed_all(recipe["seed"])
    model = _new_llama(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=tr["lr"], weight_decay=tr["weight_decay"],
                            betas=(0.9, 0.98))
    progress = _progress("target", tr["steps"])
    for step, idx in enumerate(_batches([len(s) for s, _ in encoded], tr["batch_size"], tr["steps"],
                                        recipe["seed"] + 1)):
        ids, am, _ = make_batch(encoded, idx, tok.pad_token_id)
        labels = ids.masked_fill(am == 0, -100)
        for g in opt.param_groups:
            g["lr"] = _lr(step, tr["steps"], tr["lr"], tr["warmup"])
        loss = model(input_ids=ids, attention_mask=am, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        progress.update(note=lambda: f"loss {loss.item():.4f}")
    model.eval()
    return model


@torch.no_grad()
def target_features(target, ids, am, aux_layer_ids):
    out = target(input_ids=ids, attention_mask=am, output_hidden_states=True)
    aux = torch.cat([out.hidden_states[i] for i in aux_layer_ids], dim=-1)
    return aux, out.logits


@torch.no_grad()
def response_stats(target, tok, encoded, n=256, bs=32):
    """Mean max-prob / entropy (nats) of the target at T=1 over response positions."""
    maxp_sum = ent_sum = cnt = 0.0
    for s in range(0, min(n, len(encoded)), bs):
        idx = list(range(s, min(s + bs, n, len(encoded))))
        ids, am, resp = make_batch(encoded, idx, tok.pad_token_id)
        p = torch.softmax(target(input_ids=ids, attention_mask=am).logits.float(), -1)
        maxp_sum += (p.max(-1).values * resp).sum().item()
        ent_sum += (-(p * torch.log(p.clamp_min(1e-12))).sum(-1) * resp).sum().item()
        cnt += resp.sum().item()
    return {"mean_max_prob": maxp_sum / cnt, "mean_entropy": ent_sum / cnt,
            "n_tokens": int(cnt)}


def train_eagle3(recipe, tok, encoded, target):
    from verl_specrollout.draft.eagle3 import Eagle3Config, Eagle3Draft, eagle3_loss

    tr = recipe["eagle3_train"]
    _seed_all(recipe["seed"] + 2)
    cfg = Eagle3Config.from_target_config(target.config, recipe["aux_layer_ids"])
    draft = Eagle3Draft(cfg)
    emb_w = target.model.embed_tokens.weight.detach()
    head_w = target.lm_head.weight.detach()
    opt = torch.optim.AdamW(draft.parameters(), lr=tr["lr"], weight_decay=0.0, betas=(0.9, 0.98))
    progress = _progress("eagle3", tr["steps"])
    stats = {}
    for step, idx in enumerate(_batches([len(s) for s, _ in encoded], tr["batch_size"], tr["steps"],
                                        recipe["seed"] + 3)):
        ids, am, resp = make_batch(encoded, idx, tok.pad_token_id)
        aux, tlogits = target_features(target, ids, am, recipe["aux_layer_ids"])
        for g in opt.param_groups:
            g["lr"] = _lr(step, tr["steps"], tr["lr"], tr["warmup"])
        # loss on every real position (prompt too: vLLM drafts right after the prompt)
        mask = am.float()
        loss, stats = eagle3_loss(draft, aux, ids, tlogits, embed_weight=emb_w,
                                  lm_head_weight=head_w, loss_mask=mask,
                                  num_steps=tr["num_steps"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(draft.parameters(), 1.0)
        opt.step()
        progress.update(note=lambda: f"loss {loss.item():.4f} "
                        + " ".join(f"{k}={v:.3f}" for k, v in stats.items() if "top1" in k))
    draft.eval()
    return draft, stats


def train_draft_lm(recipe, tok, encoded, target, cfg):
    tr = recipe["draft_lm_train"]
    _seed_all(recipe["seed"] + 4)
    model = _new_llama(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=tr["lr"], weight_decay=0.0, betas=(0.9, 0.98))
    progress = _progress("draft_lm", tr["steps"])
    for step, idx in enumerate(_batches([len(s) for s, _ in encoded], tr["batch_size"], tr["steps"],
                                        recipe["seed"] + 5)):
        ids, am, _ = make_batch(encoded, idx, tok.pad_token_id)
        with torch.no_grad():
            tlogits = target(input_ids=ids, attention_mask=am).logits
        for g in opt.param_groups:
            g["lr"] = _lr(step, tr["steps"], tr["lr"], tr["warmup"])
        logits = model(input_ids=ids, attention_mask=am).logits
        m = am.float()
        ce = -(torch.softmax(tlogits.float(), -1) * torch.log_softmax(logits.float(), -1)).sum(-1)
        loss = (ce * m).sum() / m.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        progress.update(note=lambda: f"loss {loss.item():.4f} top1 {_agreement(logits, tlogits, m):.3f}")
    model.eval()
    return model


@torch.no_grad()
def _agreement(logits, tlogits, mask) -> float:
    return float(((logits.argmax(-1) == tlogits.argmax(-1)).float() * mask).sum() / mask.sum())


@torch.no_grad()
def greedy_accuracy(target, tok, examples, n=64, max_new_tokens=160):
    """Fraction of held-out prompts the target solves greedily (HF generate, sanity only)."""
    from .reward import compute_score

    correct = 0
    progress = _progress("greedy eval", min(n, len(examples)), unit="prompt")
    for ex in examples[:n]:
        p = tok.apply_chat_template(task_mod.prompt_messages(ex), add_generation_prompt=True,
                                    tokenize=False)
        ids = torch.tensor([tok.encode(p, add_special_tokens=False)])
        out = target.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        correct += compute_score(task_mod.DATA_SOURCE, text, str(ex.answer))
        progress.update()
    return correct / max(1, min(n, len(examples)))


def build_into(root: str, recipe: dict) -> dict:
    """Build every artifact into ``root`` (an empty directory). Returns the stats dict."""
    from transformers import AutoTokenizer

    from verl_specrollout.draft.eagle3 import save_vllm_checkpoint

    if "base_recipe" in recipe:
        return build_expanded_into(root, recipe)
    torch.set_num_threads(int(recipe["threads"]))
    t_start = time.time()
    stats: dict = {"recipe": recipe}
    tok_dir = build_tokenizer(os.path.join(root, "tokenizer"))
    tok = AutoTokenizer.from_pretrained(tok_dir)
    vocab = int(math.ceil(len(tok) / recipe["vocab_pad_to"]) * recipe["vocab_pad_to"])

    data_dir = os.path.join(root, "data")
    task_mod.write_parquet(data_dir, seed=recipe["seed"], **recipe["data"])
    # training text: disjoint seed from the parquet splits
    train_ex = task_mod.make_examples(recipe["n_train_examples"], recipe["seed"] + 7)
    heldout = task_mod.make_examples(256, recipe["seed"] + 2000)  # = test.parquet questions
    enc = encode_examples(tok, train_ex)
    enc_held = encode_examples(tok, heldout)

    t0 = time.time()
    tcfg = llama_config(recipe, recipe["target"], vocab, tok)
    target = train_target(recipe, tok, enc, tcfg)
    stats["target_train_seconds"] = time.time() - t0
    stats["target_params"] = n_params(target)
    stats["target_response_stats"] = response_stats(target, tok, enc_held)
    _log(f"target stats {stats['target_response_stats']}")
    target_dir = os.path.join(root, "target")
    target.save_pretrained(target_dir, safe_serialization=True)
    tok.save_pretrained(target_dir)

    t0 = time.time()
    eagle, estats = train_eagle3(recipe, tok, enc, target)
    stats["eagle3_train_seconds"] = time.time() - t0
    stats["eagle3_params"] = n_params(eagle)
    stats["eagle3_train_stats"] = estats
    save_vllm_checkpoint(eagle, os.path.join(root, "eagle3"), target.config,
                         extra={"recipe_version": RECIPE_VERSION})

    t0 = time.time()
    dcfg = llama_config(recipe, recipe["draft_lm"], vocab, tok)
    dlm = train_draft_lm(recipe, tok, enc, target, dcfg)
    stats["draft_lm_train_seconds"] = time.time() - t0
    stats["draft_lm_params"] = n_params(dlm)
    dlm_dir = os.path.join(root, "draft_lm")
    dlm.save_pretrained(dlm_dir, safe_serialization=True)
    tok.save_pretrained(dlm_dir)

    t0 = time.time()
    stats["target_greedy_accuracy"] = greedy_accuracy(target, tok, heldout, n=16)
    stats["eval_seconds"] = time.time() - t0
    stats["build_seconds"] = time.time() - t_start
    with open(os.path.join(root, "stats.json"), "w") as f:
        json.dump(stats, f, indent=2)
    _log(f"built in {stats['build_seconds']:.0f}s")
    return stats


def build_expanded_into(root: str, recipe: dict) -> dict:
    """An EXPANDED size: the base testbed (built first if not cached) with its target and EAGLE-3
    head expanded; tokenizer, data and the draft LM (an independent small model) copied as they are."""
    import shutil

    from .cache import build_testbed
    from .expand import ExpandShape, expand_checkpoint, expand_eagle3_checkpoint, logits_check

    torch.set_num_threads(int(recipe["threads"]))
    t_start = time.time()
    base_recipe = recipe["base_recipe"]
    base = build_testbed(base_recipe["size"], recipe=base_recipe)
    t0 = time.time()
    shape = ExpandShape.from_dict(recipe["expand"])
    for name in ("tokenizer", "data", "draft_lm"):
        shutil.copytree(os.path.join(base.root, name), os.path.join(root, name))
    target_dir, eagle3_dir = os.path.join(root, "target"), os.path.join(root, "eagle3")
    info = expand_checkpoint(base.target_dir, target_dir, shape)
    head = expand_eagle3_checkpoint(base.eagle3_dir, eagle3_dir, base.target_dir, shape, info["plan"])
    if head["aux_layer_ids"] != recipe["aux_layer_ids"]:
        raise RuntimeError(f"expanded head reads layers {head['aux_layer_ids']}, recipe says "
                           f"{recipe['aux_layer_ids']}")
    expand_seconds = time.time() - t0

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.join(root, "tokenizer"))
    heldout = encode_examples(tok, task_mod.make_examples(4, base_recipe["seed"] + 2000))
    ids, am, _ = make_batch(heldout, list(range(len(heldout))), tok.pad_token_id)
    check = logits_check(base.target_dir, target_dir, ids, am)
    _log(f"expanded {base.size} -> {recipe['size']}: {info['source_params'] / 1e6:.1f} M -> "
         f"{info['params'] / 1e6:.1f} M params, logits max |diff| {check['max_abs_diff']:.2e}, "
         f"argmax agreement {check['argmax_agreement']:.4f}")
    bs = base.stats
    stats = {
        "recipe": recipe, "base_root": base.root, "base_build_seconds": base.build_seconds,
        "target_params": info["params"], "base_target_params": info["source_params"],
        "eagle3_params": head["params"], "base_eagle3_params": bs.get("eagle3_params"),
        "draft_lm_params": bs.get("draft_lm_params"), "layer_positions": info["plan"].positions,
        "aux_layer_ids": head["aux_layer_ids"], "logits_check": check,
        # the function is the base's: its measured quality carries over
        "target_response_stats": bs.get("target_response_stats"),
        "target_greedy_accuracy": bs.get("target_greedy_accuracy"),
        "eagle3_train_stats": bs.get("eagle3_train_stats"),
        "expand_seconds": expand_seconds, "build_seconds": time.time() - t_start,
    }
    with open(os.path.join(root, "stats.json"), "w") as f:
        json.dump(stats, f, indent=2)
    _log(f"built in {stats['build_seconds']:.0f}s (expansion {expand_seconds:.0f}s)")
    return stats
