"""Unit tests of the testbed pieces that need no training: tokenizer, task, reward, cache key,
and the EAGLE-3 module / checkpoint round trip."""

import json
import os

import pytest

from verl_specrollout.testing.testbed import task as task_mod
from verl_specrollout.testing.testbed.reward import compute_score, extract_answer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from transformers import AutoTokenizer

    from verl_specrollout.testing.testbed.tokenizer import build_tokenizer

    d = build_tokenizer(str(tmp_path_factory.mktemp("tok")))
    return AutoTokenizer.from_pretrained(d)


def test_tokenizer_round_trip_and_digits(tok):
    for ex in task_mod.make_examples(50, seed=3):
        for text in (ex.question, ex.solution):
            ids = tok.encode(text, add_special_tokens=False)
            assert tok.unk_token_id not in ids
            assert tok.decode(ids) == text
    toks = tok.convert_ids_to_tokens(tok.encode("12 + 305 = 317", add_special_tokens=False))
    assert toks == ["1", "@@2", "+", "3", "@@0", "@@5", "=", "3", "@@1", "@@7"]
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id"):
        assert getattr(tok, name) is not None
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}) == 4


def test_chat_template(tok):
    msgs = [{"role": "user", "content": "tom has 3 apples . how many now ?"}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text.startswith(tok.bos_token) and text.endswith("<assistant>")
    ids = tok.encode(text, add_special_tokens=False)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.decode(ids, skip_special_tokens=True).strip() == msgs[0]["content"]


def test_examples_deterministic_and_correct():
    a = task_mod.make_examples(200, seed=11)
    b = task_mod.make_examples(200, seed=11)
    assert [(e.question, e.solution) for e in a] == [(e.question, e.solution) for e in b]
    assert [e.solution for e in a] != [e.solution for e in task_mod.make_examples(200, seed=12)]
    steps = {e.num_steps for e in a}
    assert min(steps) == 1 and max(steps) >= 4
    for e in a:
        assert e.solution.endswith(f"#### {e.answer}")
        # every worked step is arithmetically right
        for part in e.solution.split(" . "):
            if "=" in part:
                lhs, rhs = part.split("=")
                lhs = lhs.split()[-3:]
                assert eval(" ".join(lhs)) == int(rhs.split()[0])
        assert compute_score(task_mod.DATA_SOURCE, e.solution, str(e.answer)) == 1.0


def test_reward():
    assert compute_score("x", "2 + 3 = 5 . #### 5", "5") == 1.0
    assert compute_score("x", "#### 4 ... #### 5", "5") == 1.0  # last answer counts
    assert compute_score("x", "2 + 3 = 5 . #### 6", "5") == 0.0
    assert compute_score("x", "2 + 3 = 5 .", "5") == 0.0
    for garbage in ("", "####", "#### abc", None, 123, "\x00\xff####", "#" * 10000):
        assert compute_score("x", garbage, "5") == 0.0
    assert compute_score("x", "#### 5", "not a number") == 0.0
    assert extract_answer("so the answer is 12 . #### 12") == 12


def test_write_parquet(tmp_path):
    import pandas as pd

    paths = task_mod.write_parquet(str(tmp_path), n_train=16, n_test=8)
    df = pd.read_parquet(paths["train"])
    assert len(df) == 16 and len(pd.read_parquet(paths["test"])) == 8
    assert set(df.columns) >= {"data_source", "prompt", "ability", "reward_model", "extra_info"}
    row = df.iloc[0]
    assert list(row["prompt"])[0]["role"] == "user"
    assert row["reward_model"]["style"] == "rule"
    assert isinstance(row["reward_model"]["ground_truth"], str)
    assert row["extra_info"]["split"] == "train"


def test_cache_key_tracks_recipe(monkeypatch, tmp_path):
    from verl_specrollout.testing.testbed import build as build_mod
    from verl_specrollout.testing.testbed import cache

    monkeypatch.setenv("SPECROLLOUT_CACHE", str(tmp_path))
    r = build_mod.get_recipe("tiny")
    h0 = cache.recipe_hash(r)
    d0 = cache.testbed_dir("tiny", r)
    assert d0.startswith(str(tmp_path)) and os.path.basename(d0).startswith("tiny-")
    assert cache.testbed_dir("tiny") == d0  # stable
    r2 = build_mod.get_recipe("tiny")
    r2["target_train"]["steps"] += 1
    assert cache.testbed_dir("tiny", r2) != d0
    monkeypatch.setattr(build_mod, "RECIPE_VERSION", "test-bump")
    assert cache.testbed_dir("tiny", build_mod.get_recipe("tiny")) != d0
    assert cache.testbed_dir("medium") != d0
    assert not cache.is_built("tiny", r)
    monkeypatch.undo()
    # Editing a returned recipe (r2 above) must not move later builds to another cache dir.
    assert cache.recipe_hash(build_mod.get_recipe("tiny")) == cache.recipe_hash(r) == h0


def _tiny_target_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=128, hidden_size=64, num_hidden_layers=3,
                       num_attention_heads=2, num_key_value_heads=2, head_dim=32,
                       intermediate_size=128, tie_word_embeddings=False)


def test_eagle3_checkpoint_round_trip(tmp_path):
    import torch
    from safetensors.torch import load_file

    from verl_specrollout.draft.eagle3 import (Eagle3Config, Eagle3Draft, eagle3_loss,
                                               load_vllm_checkpoint, save_vllm_checkpoint)

    torch.manual_seed(0)
    tc = _tiny_target_config()
    cfg = Eagle3Config.from_target_config(tc, [0, 1, 2])
    m = Eagle3Draft(cfg)
    out = save_vllm_checkpoint(m, str(tmp_path / "e3"), tc)
    names = set(load_file(os.path.join(out, "model.safetensors")))
    assert "fc.weight" in names and "norm.weight" in names
    assert {n.split(".")[0] for n in names} == {"fc", "norm", "midlayer"}
    assert "midlayer.self_attn.q_proj.weight" in names
    assert "midlayer.hidden_norm.weight" in names
    c = json.load(open(os.path.join(out, "config.json")))
    assert c["num_hidden_layers"] == 1 and c["architectures"] == ["LlamaForCausalLM"]
    assert c["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [0, 1, 2]
    assert c["target_hidden_size"] == 64 and c["vocab_size"] == 128
    m2 = load_vllm_checkpoint(out)
    # overwrite atomically, no temp leftovers
    save_vllm_checkpoint(m2, out, tc)
    assert sorted(os.listdir(tmp_path)) == ["e3"]
    B, T = 2, 7
    aux = torch.randn(B, T, 3 * 64)
    ids = torch.randint(0, 128, (B, T))
    emb, head = torch.randn(128, 64), torch.randn(128, 64)
    with torch.no_grad():
        a = m(aux, ids, embed_weight=emb, lm_head_weight=head, num_steps=3)
        b = m2(aux, ids, embed_weight=emb, lm_head_weight=head, num_steps=3)
    assert len(a) == 3 and a[0].shape == (B, T, 128)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
    loss, stats = eagle3_loss(m, aux, ids, torch.randn(B, T, 128), embed_weight=emb,
                              lm_head_weight=head, num_steps=2)
    loss.backward()
    assert m.fc.weight.grad is not None and "step2_top1" in stats


def test_eagle3_step1_is_causal():
    """Step-1 logits at slot t must not depend on anything after slot t+1's token."""
    import torch

    from verl_specrollout.draft.eagle3 import Eagle3Config, Eagle3Draft

    torch.manual_seed(0)
    cfg = Eagle3Config.from_target_config(_tiny_target_config(), [0, 1])
    m = Eagle3Draft(cfg).eval()
    aux = torch.randn(1, 6, 128)
    ids = torch.randint(0, 128, (1, 6))
    emb, head = torch.randn(128, 64), torch.randn(128, 64)
    aux2, ids2 = aux.clone(), ids.clone()
    aux2[:, 4:] += 1.0
    ids2[:, 5] = (ids2[:, 5] + 1) % 128
    with torch.no_grad():
        a = m(aux, ids, embed_weight=emb, lm_head_weight=head, num_steps=2)
        b = m(aux2, ids2, embed_weight=emb, lm_head_weight=head, num_steps=2)
    torch.testing.assert_close(a[0][:, :4], b[0][:, :4])  # slot t uses x[t+1], aux[<=t]
    torch.testing.assert_close(a[1][:, :3], b[1][:, :3])  # step 2 slot t uses x[t+2]


def test_build_testbed_caches_atomically(monkeypatch, tmp_path):
    """build_testbed builds once into a temp dir, renames it into place, then reuses it;
    a failed build leaves nothing behind."""
    from verl_specrollout.testing.testbed import cache

    monkeypatch.setenv("SPECROLLOUT_CACHE", str(tmp_path))
    calls = []

    def fake_build(root, recipe):
        calls.append(root)
        assert ".tmp-" in root
        with open(os.path.join(root, "stats.json"), "w") as f:
            json.dump({"build_seconds": 1.5}, f)

    monkeypatch.setattr(cache, "build_into", fake_build)
    tb = cache.build_testbed("tiny")
    assert tb.root == cache.testbed_dir("tiny") and os.path.isdir(tb.root)
    assert tb.build_seconds == 1.5 and tb.aux_layer_ids
    assert cache.build_testbed("tiny").root == tb.root and len(calls) == 1
    cache.build_testbed("tiny", force=True)
    assert len(calls) == 2

    def failing_build(root, recipe):
        raise RuntimeError("boom")

    monkeypatch.setattr(cache, "build_into", failing_build)
    with pytest.raises(RuntimeError):
        cache.build_testbed("medium")
    leftovers = [n for n in os.listdir(os.path.join(str(tmp_path), "testbed"))
                 if n.startswith("medium") and not n.endswith(".lock")]
    assert leftovers == []
