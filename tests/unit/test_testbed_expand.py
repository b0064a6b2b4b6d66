"""Function-preserving expansion (verl_specrollout/testing/testbed/expand.py) on the tiny testbed:
the expanded target computes the same logits, the widened EAGLE-3 head the same drafts, and the
checkpoint holds the configured (bigger) shape."""

import json
import os

import pytest
import torch

from verl_specrollout.testing.testbed.expand import (ExpandError, ExpandShape, expand_checkpoint,
                                                     expand_eagle3_checkpoint, expand_target_state, layer_plan,
                                                     llama_param_count, q_head_slots)

# 4 -> 8 q heads over 4 -> 4 kv heads: two q heads per kv head now, so the original heads move slots.
SHAPE = ExpandShape(hidden_size=384, num_attention_heads=8, num_key_value_heads=4, intermediate_size=768,
                    num_hidden_layers=7, new_layers="spread", seed=3)
LOGIT_TOL = 1e-4  # fp32 rounding: the logits are O(10)


@pytest.fixture(scope="module")
def tiny():
    from verl_specrollout.testing.testbed import build_testbed

    return build_testbed("tiny")


@pytest.fixture(scope="module")
def expanded(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("expanded")
    info = expand_checkpoint(tiny.target_dir, str(out / "target"), SHAPE)
    head = expand_eagle3_checkpoint(tiny.eagle3_dir, str(out / "eagle3"), tiny.target_dir, SHAPE, info["plan"])
    return {"dir": str(out / "target"), "eagle3": str(out / "eagle3"), "info": info, "head": head}


@pytest.fixture(scope="module")
def batch(tiny):
    """Held-out task sequences (prompt + solution), padded, with their attention mask."""
    from transformers import AutoTokenizer

    from verl_specrollout.testing.testbed import task
    from verl_specrollout.testing.testbed.build import encode_examples, make_batch

    tok = AutoTokenizer.from_pretrained(tiny.tokenizer_dir)
    enc = encode_examples(tok, task.make_examples(6, seed=4242))
    ids, am, _ = make_batch(enc, list(range(len(enc))), tok.pad_token_id)
    return ids, am


def _load(d):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()


@torch.no_grad()
def _run(d, ids, am):
    return _load(d)(input_ids=ids, attention_mask=am, output_hidden_states=True)


def _assert_same_logits(a, b, am):
    m = am.bool()
    diff = (a.logits[m] - b.logits[m]).abs().max().item()
    assert diff < LOGIT_TOL, diff
    assert torch.equal(a.logits[m].argmax(-1), b.logits[m].argmax(-1))


def test_logits_match(tiny, expanded, batch):
    ids, am = batch
    _assert_same_logits(_run(tiny.target_dir, ids, am), _run(expanded["dir"], ids, am), am)


def test_aux_states_are_the_originals_zero_padded(tiny, expanded, batch):
    ids, am = batch
    a, b = _run(tiny.target_dir, ids, am), _run(expanded["dir"], ids, am)
    H = a.hidden_states[0].shape[-1]
    plan = expanded["info"]["plan"]
    assert expanded["head"]["aux_layer_ids"] == [plan.aux_id(i) for i in tiny.aux_layer_ids]
    for old, new in zip(tiny.aux_layer_ids, expanded["head"]["aux_layer_ids"]):
        ha, hb = a.hidden_states[old], b.hidden_states[new]
        assert (ha - hb[..., :H]).abs().max().item() < 1e-4
        assert torch.count_nonzero(hb[..., H:]) == 0  # the new residual units stay exactly 0


@torch.no_grad()
def test_eagle3_head_on_expanded_target_drafts_the_same(tiny, expanded, batch):
    from verl_specrollout.draft.eagle3 import load_vllm_checkpoint
    from verl_specrollout.testing.testbed.build import target_features

    ids, am = batch
    logits = []
    for tdir, hdir, aux_ids in ((tiny.target_dir, tiny.eagle3_dir, tiny.aux_layer_ids),
                                (expanded["dir"], expanded["eagle3"], expanded["head"]["aux_layer_ids"])):
        target, head = _load(tdir), load_vllm_checkpoint(hdir).eval()
        assert head.config.aux_layer_ids == list(aux_ids)
        aux, _ = target_features(target, ids, am, aux_ids)
        logits.append(head(aux, ids, embed_weight=target.model.embed_tokens.weight,
                           lm_head_weight=target.lm_head.weight, attention_mask=am, num_steps=3))
    # slot t of step j is padding once t + j runs past the sequence; compare the valid slots
    for j, (la, lb) in enumerate(zip(*logits), start=1):
        valid = torch.cat([am[:, j:], torch.zeros_like(am[:, :j])], dim=1).bool()
        assert (la[valid] - lb[valid]).abs().max().item() < LOGIT_TOL, j
        assert torch.equal(la[valid].argmax(-1), lb[valid].argmax(-1)), j


def test_parameter_count_grows_as_configured(tiny, expanded):
    from verl_specrollout.draft.eagle3 import load_vllm_checkpoint

    with open(os.path.join(expanded["dir"], "config.json")) as f:
        cfg = json.load(f)
    for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size",
              "num_hidden_layers"):
        assert cfg[k] == getattr(SHAPE, k), k
    with open(os.path.join(tiny.target_dir, "config.json")) as f:
        src = json.load(f)
    assert cfg["head_dim"] == src["head_dim"]  # RoPE unchanged
    want = llama_param_count(cfg["vocab_size"], SHAPE.hidden_size, SHAPE.num_attention_heads,
                             SHAPE.num_key_value_heads, cfg["head_dim"], SHAPE.intermediate_size,
                             SHAPE.num_hidden_layers)
    model = _load(expanded["dir"])
    assert sum(p.numel() for p in model.parameters()) == want == expanded["info"]["params"]
    assert want > 3 * expanded["info"]["source_params"]
    head = load_vllm_checkpoint(expanded["eagle3"])
    c = head.config
    assert (c.hidden_size, c.target_hidden_size, c.num_attention_heads, c.intermediate_size) == (
        SHAPE.hidden_size, SHAPE.hidden_size, SHAPE.num_attention_heads, SHAPE.intermediate_size)
    assert sum(p.numel() for p in head.parameters()) == expanded["head"]["params"] > tiny.stats["eagle3_params"]
    # readers of the new residual units get random (non-zero) weights: the kernels do real work
    sd, H = model.state_dict(), src["hidden_size"]
    for name in ("lm_head.weight", "model.layers.1.self_attn.q_proj.weight", "model.layers.1.mlp.up_proj.weight"):
        assert torch.count_nonzero(sd[name][:, H:]) == sd[name][:, H:].numel(), name


@pytest.mark.parametrize("new_layers", ["end", (0, 3, 6)])
def test_other_layer_placements_keep_the_function(tiny, batch, tmp_path, new_layers):
    ids, am = batch
    shape = ExpandShape(hidden_size=320, num_attention_heads=5, num_key_value_heads=5, intermediate_size=640,
                        num_hidden_layers=7, new_layers=new_layers)
    info = expand_checkpoint(tiny.target_dir, str(tmp_path / "t"), shape)
    assert len(info["plan"].identity) == 3
    _assert_same_logits(_run(tiny.target_dir, ids, am), _run(str(tmp_path / "t"), ids, am), am)


def test_layer_plan_and_aux_ids():
    plan = layer_plan(6, 32, "spread")
    assert plan.positions == sorted(plan.positions) and len(set(plan.positions)) == 6
    assert plan.positions[0] == 0 and len(plan.identity) == 26
    assert [plan.aux_id(i) for i in (0, 1, 3, 5)] == [plan.positions[i] for i in (0, 1, 3, 5)]
    assert plan.aux_id(6) == 32
    assert layer_plan(4, 6, "end").positions == [0, 1, 2, 3]
    assert layer_plan(4, 6, [0, 5]).positions == [1, 2, 3, 4]
    assert q_head_slots(4, 2, 8, 2) == [0, 1, 4, 5]  # groups of 2 -> groups of 4, kv head kept


@pytest.mark.parametrize("bad, match", [
    (dict(hidden_size=128), "must not shrink"),
    (dict(num_hidden_layers=3), "num_hidden_layers 3 < the original 4"),
    (dict(num_attention_heads=4, num_key_value_heads=8), "num_key_value_heads|multiple"),
    (dict(new_layers=(1,)), "must name 3 distinct"),
    (dict(new_layers="middle"), "'spread', 'end'"),
])
def test_bad_shapes_raise_one_clear_error(tiny, bad, match):
    from safetensors.torch import load_file

    with open(os.path.join(tiny.target_dir, "config.json")) as f:
        cfg = json.load(f)
    sd = load_file(os.path.join(tiny.target_dir, "model.safetensors"))
    kw = dict(hidden_size=384, num_attention_heads=8, num_key_value_heads=4, intermediate_size=768,
              num_hidden_layers=7)
    kw.update(bad)
    with pytest.raises(ExpandError, match=match):
        expand_target_state(sd, cfg, ExpandShape(**kw))
    with pytest.raises(ExpandError, match="only Llama"):
        expand_target_state(sd, {**cfg, "model_type": "mistral"}, SHAPE)
    with pytest.raises(ExpandError, match="unknown expansion keys"):
        ExpandShape.from_dict({"hidden": 1})


def test_regime_recipe_derives_from_medium_and_tiny_is_unchanged():
    from verl_specrollout.testing.testbed import get_recipe, recipe_hash

    # the CI cache is named by this hash: an edit to the tiny recipe would rebuild it everywhere
    assert recipe_hash(get_recipe("tiny")) == "cb19b12f605d"
    r = get_recipe("regime")
    assert r["base_recipe"] == get_recipe("medium")
    plan = layer_plan(6, r["expand"]["num_hidden_layers"], r["expand"]["new_layers"])
    assert r["aux_layer_ids"] == [plan.aux_id(i) for i in get_recipe("medium")["aux_layer_ids"]]
    base = get_recipe("medium")["target"]
    n = llama_param_count(128, r["expand"]["hidden_size"], r["expand"]["num_attention_heads"],
                          r["expand"]["num_key_value_heads"], base["hidden_size"] // base["num_attention_heads"],
                          r["expand"]["intermediate_size"], r["expand"]["num_hidden_layers"])
    assert n >= 100_000_000


def test_regime_tiny_recipe_derives_from_tiny_at_the_regime_shape():
    from verl_specrollout.testing.testbed import get_recipe, recipe_hash

    r, regime = get_recipe("regime-tiny"), get_recipe("regime")
    assert r["base_recipe"] == get_recipe("tiny") and r["expand"] == regime["expand"]
    plan = layer_plan(4, r["expand"]["num_hidden_layers"], r["expand"]["new_layers"])
    assert r["aux_layer_ids"] == [plan.aux_id(i) for i in get_recipe("tiny")["aux_layer_ids"]]
    assert recipe_hash(r) != recipe_hash(regime)  # its own cache dir


def test_cli_expands_target_and_head(tiny, tmp_path, capsys):
    from verl_specrollout.testing.testbed.expand import main

    main([tiny.target_dir, str(tmp_path / "t"), "--hidden-size", "320", "--num-attention-heads", "5",
          "--num-key-value-heads", "5", "--intermediate-size", "640", "--num-hidden-layers", "6",
          "--new-layers", "0,5", "--eagle3", tiny.eagle3_dir, "--eagle3-out", str(tmp_path / "e3")])
    assert "aux layers [2, 3, 4]" in capsys.readouterr().out  # original layers sit at 1..4
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert os.path.isfile(tmp_path / "t" / name), name
    with pytest.raises(SystemExit, match="must not shrink"):
        main([tiny.target_dir, str(tmp_path / "u"), "--hidden-size", "128", "--num-attention-heads", "4",
              "--num-key-value-heads", "4", "--intermediate-size", "512", "--num-hidden-layers", "4"])
