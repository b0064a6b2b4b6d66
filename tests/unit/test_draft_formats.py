"""Public EAGLE-3 head layouts: vLLM's / the EAGLE authors' (safetensors or pytorch_model.bin) and the
speculators library's, with a reduced draft vocabulary (d2t), read, validated, loaded and trained."""

import json
import os

import pytest
import torch

from verl_specrollout.config import SpecRolloutConfig, SpecRolloutConfigError, draft_aux_layer_ids
from verl_specrollout.draft.eagle3 import (
    Eagle3Config,
    Eagle3Draft,
    eagle3_loss,
    load_vllm_checkpoint,
    save_vllm_checkpoint,
    soft_targets,
    top1_agrees,
    vllm_state_dict,
)
from verl_specrollout.draft.format import read_draft_info
from verl_specrollout.learner.trainer import DraftTrainer

H, V, DV, AUX = 64, 128, 48, [1, 2]


def _head(seed=0, norm_before_residual=False) -> Eagle3Draft:
    torch.manual_seed(seed)
    cfg = Eagle3Config(hidden_size=H, num_attention_heads=2, num_key_value_heads=2, intermediate_size=128,
                       vocab_size=V, aux_layer_ids=AUX, draft_vocab_size=DV, own_lm_head=True,
                       norm_before_residual=norm_before_residual)
    draft = Eagle3Draft(cfg)
    for p in draft.parameters():
        torch.nn.init.normal_(p, std=0.1)  # norms too: a round trip must show every tensor
    ids = torch.sort(torch.randperm(V)[:DV]).values
    draft.d2t.copy_(ids - torch.arange(DV))
    return draft


def _layer_fields():
    return {"hidden_size": H, "num_attention_heads": 2, "num_key_value_heads": 2, "intermediate_size": 128,
            "vocab_size": V, "rms_norm_eps": 1e-6, "max_position_embeddings": 2048, "head_dim": 32,
            "num_hidden_layers": 1, "hidden_act": "silu"}


def write_vllm_safetensors(draft, d):
    from safetensors.torch import save_file

    os.makedirs(d)
    cfg = draft.config.to_vllm_config()
    cfg["architectures"] = ["LlamaForCausalLMEagle3"]
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    save_file(vllm_state_dict(draft), os.path.join(d, "model.safetensors"))
    return d


def write_eagle_bin(draft, d):
    """The EAGLE authors' layout: top-level Llama fields, no eagle_config, pytorch_model.bin."""
    os.makedirs(d)
    cfg = {"architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "draft_vocab_size": DV,
           "rope_theta": 10000.0, "torch_dtype": "float32", **_layer_fields()}
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    torch.save(vllm_state_dict(draft), os.path.join(d, "pytorch_model.bin"))
    return d


def speculators_config(layer=None, **top):
    cfg = {
        "architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3",
        "transformer_layer_config": layer if layer is not None else
        {"model_type": "llama", **_layer_fields(), "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
        "draft_vocab_size": DV, "target_hidden_size": None, "norm_before_residual": True,
        "eagle_aux_hidden_state_layer_ids": AUX,
        "speculators_config": {"algorithm": "eagle3", "default_proposal_method": "greedy",
                               "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": 3}],
                               "verifier": {"name_or_path": "toy/target", "architectures": ["LlamaForCausalLM"]}},
    }
    cfg.update(top)
    return cfg


def write_speculators(draft, d, config=None):
    from safetensors.torch import save_file

    os.makedirs(d)
    json.dump(config or speculators_config(), open(os.path.join(d, "config.json"), "w"))
    sd = {k.replace("midlayer.", "layers.0."): v for k, v in vllm_state_dict(draft).items()}
    save_file(sd, os.path.join(d, "model.safetensors"))
    return d


def write_target(tmp_path, vocab=V, name="target"):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "vocab_size": vocab,
                                               "hidden_size": H, "num_hidden_layers": 3}))
    return str(d)


@pytest.fixture
def heads(tmp_path):
    draft = _head()
    spec_draft = _head(norm_before_residual=True)
    return {
        "vllm": (draft, write_vllm_safetensors(draft, str(tmp_path / "vllm"))),
        "bin": (draft, write_eagle_bin(draft, str(tmp_path / "bin"))),
        "speculators": (spec_draft, write_speculators(spec_draft, str(tmp_path / "spec"))),
        "specrollout": (draft, save_vllm_checkpoint(draft, str(tmp_path / "ours"))),
    }


def _validate(draft_dir, target_dir):
    return SpecRolloutConfig.from_dict({"enable": True, "method": "eagle3", "draft_path": draft_dir}).validate(
        target_dir)


# ----------------------------------------------------------------------------- reading configs
@pytest.mark.parametrize("kind, fmt, files, aux", [
    ("vllm", "vllm", ["model.safetensors"], AUX),
    ("bin", "vllm", ["pytorch_model.bin"], None),
    ("speculators", "speculators", ["model.safetensors"], AUX),
    ("specrollout", "specrollout", ["model.safetensors"], AUX),
])
def test_read_draft_info(heads, kind, fmt, files, aux):
    info = read_draft_info(heads[kind][1])
    assert (info.format, info.vocab_size, info.draft_vocab_size) == (fmt, V, DV)
    assert (info.hidden_size, info.target_hidden_size, info.aux_layer_ids) == (H, H, aux)
    assert info.weight_files == files and info.reduced_vocab and info.eagle3
    assert draft_aux_layer_ids(heads[kind][1]) == aux
    if files[0].endswith(".safetensors"):
        assert {"d2t", "t2d", "lm_head.weight", "fc.weight"} <= info.tensor_names
    else:
        assert info.tensor_names is None  # a .bin needs torch; checked at load time
    if kind == "speculators":
        assert info.layer_config["norm_before_residual"] is True


@pytest.mark.parametrize("kind", ["vllm", "bin", "speculators", "specrollout"])
def test_config_validation_accepts_matching_target(tmp_path, heads, kind):
    _validate(heads[kind][1], write_target(tmp_path))


@pytest.mark.parametrize("kind", ["vllm", "bin", "speculators"])
def test_config_validation_refuses_other_vocab(tmp_path, heads, kind):
    target = write_target(tmp_path, vocab=V + 2)
    with pytest.raises(SpecRolloutConfigError, match=rf"draft vocabulary \({V}, .*does not match the target's "
                                                     rf"\({V + 2}, "):
        _validate(heads[kind][1], target)


def test_missing_key_is_named(tmp_path, heads):
    layer = {k: v for k, v in speculators_config()["transformer_layer_config"].items() if k != "hidden_size"}
    d = write_speculators(heads["speculators"][0], str(tmp_path / "nohidden"), speculators_config(layer))
    with pytest.raises(SpecRolloutConfigError, match=r"config.json \(transformer_layer_config\): missing key "
                                                     r"'hidden_size'$"):
        _validate(d, write_target(tmp_path))

    d = str(tmp_path / "nolayer")
    cfg = speculators_config()
    del cfg["transformer_layer_config"]
    write_speculators(heads["speculators"][0], d, cfg)
    with pytest.raises(SpecRolloutConfigError, match="missing key 'transformer_layer_config'"):
        read_draft_info(d)


def test_reduced_vocab_without_d2t_is_refused(tmp_path, heads):
    from safetensors.torch import load_file, save_file

    d = heads["vllm"][1]
    sd = load_file(os.path.join(d, "model.safetensors"))
    del sd["d2t"]
    save_file(sd, os.path.join(d, "model.safetensors"))
    with pytest.raises(SpecRolloutConfigError, match="no 'd2t' tensor"):
        _validate(d, write_target(tmp_path))


def test_missing_weights_and_unknown_speculator_type(tmp_path, heads):
    os.remove(os.path.join(heads["vllm"][1], "model.safetensors"))
    with pytest.raises(SpecRolloutConfigError, match="no draft weights .*model.safetensors.*pytorch_model.bin"):
        read_draft_info(heads["vllm"][1])
    d = write_speculators(heads["speculators"][0], str(tmp_path / "dflash"),
                          speculators_config(speculators_model_type="dflash"))
    with pytest.raises(SpecRolloutConfigError, match="speculators_model_type='dflash' is not supported"):
        read_draft_info(d)


def test_config_module_stays_torch_free():
    import subprocess
    import sys

    code = "import sys, verl_specrollout.config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- loading
@pytest.mark.parametrize("kind", ["vllm", "bin", "speculators", "specrollout"])
def test_load_round_trips(heads, kind):
    draft, d = heads[kind]
    loaded = load_vllm_checkpoint(d, aux_layer_ids=AUX)
    want, got = draft.state_dict(), loaded.state_dict()
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert loaded.config.aux_layer_ids == AUX and loaded.config.draft_vocab_size == DV
    assert loaded.config.norm_before_residual == (kind == "speculators")
    assert torch.equal(loaded.target_ids(), draft.target_ids())


def test_saved_copy_of_a_speculators_head_is_vllm_format(tmp_path, heads):
    loaded = load_vllm_checkpoint(heads["speculators"][1])
    out = save_vllm_checkpoint(loaded, str(tmp_path / "resaved"))
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["draft_vocab_size"] == DV and cfg["vocab_size"] == V and cfg["norm_before_residual"] is True
    assert cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == AUX
    names = read_draft_info(out).tensor_names
    assert {"d2t", "t2d", "lm_head.weight", "midlayer.self_attn.q_proj.weight"} <= names
    assert not any(n.startswith("layers.") for n in names)


def test_bin_without_aux_ids_uses_given_ones(heads):
    assert load_vllm_checkpoint(heads["bin"][1], aux_layer_ids=[5, 7]).config.aux_layer_ids == [5, 7]


def test_norm_before_residual_changes_the_forward():
    a, b = _head(seed=3), _head(seed=3, norm_before_residual=True)
    b.load_state_dict(a.state_dict())
    aux, ids, emb = torch.randn(1, 6, 2 * H), torch.randint(0, V, (1, 6)), torch.randn(V, H)
    assert not torch.allclose(a(aux, ids, embed_weight=emb)[0], b(aux, ids, embed_weight=emb)[0])


# ----------------------------------------------------------------------------- training
def _samples(n, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, V, (T,), generator=g, dtype=torch.int32),
             "aux": torch.randn(T, len(AUX) * H, generator=g).bfloat16(),
             "final_hidden": torch.randn(T, H, generator=g).bfloat16(),
             "loss_mask": torch.tensor([1] * (T - 1) + [0], dtype=torch.uint8)} for _ in range(n)]


def test_soft_targets_are_the_target_restricted_to_the_draft_vocab():
    draft = _head()
    logits = torch.randn(2, 3, V)
    ids = draft.target_ids()
    p = soft_targets(logits, ids)
    assert p.shape == (2, 3, DV)
    assert torch.allclose(p, torch.softmax(logits[..., ids], -1))
    assert torch.allclose(soft_targets(logits, None), torch.softmax(logits, -1))


def test_trainer_trains_a_reduced_vocab_head(heads):
    torch.manual_seed(0)
    draft = load_vllm_checkpoint(heads["speculators"][1])
    emb, head = torch.randn(V, H), torch.randn(V, H)
    tr = DraftTrainer(draft, emb, head, lr=3e-3, num_steps=2, batch_size=4, soft_ce_loss_weight=1.0)
    data = _samples(4)
    first = tr.train_step(data)
    for _ in range(20):
        last = tr.train_step(data)
    assert last["loss"] < first["loss"] and last["step1_ce"] < first["step1_ce"]
    assert torch.equal(tr.draft.target_ids(), draft.target_ids())  # the map is a buffer, never trained
    ev = tr.evaluate(data)
    assert 0.0 <= ev["eval_step1_top1"] <= 1.0 and 0.0 <= ev["eval_step2_top1"] <= 1.0


def test_top1_counts_in_target_ids():
    """Draft id 5 agrees with a target whose top token is target id ids[5], not target id 5."""
    ids = _head().target_ids()
    draft_logits = torch.zeros(1, DV)
    draft_logits[0, 5] = 1.0
    target_logits = torch.zeros(2, V)
    target_logits[0, ids[5]] = 1.0
    other = 5 if ids[5] != 5 else 6
    target_logits[1, other] = 1.0
    assert top1_agrees(draft_logits.expand(2, DV), target_logits, ids).tolist() == [True, False]
    assert top1_agrees(target_logits, target_logits, None).tolist() == [True, True]  # full vocab: same ids


def test_eagle3_loss_on_a_reduced_vocab_head():
    draft = _head()
    loss, stats = eagle3_loss(draft, torch.randn(2, 8, 2 * H), torch.randint(0, V, (2, 8)), torch.randn(2, 8, V),
                              embed_weight=torch.randn(V, H), num_steps=2)
    assert torch.isfinite(loss) and "step2_top1" in stats
    with pytest.raises(ValueError, match="vocabulary rows"):
        DraftTrainer(draft, torch.randn(V, H), torch.randn(V + 1, H))


def test_plain_draft_lm_needs_only_its_vocab(tmp_path):
    """method=draft_model drafts are whole small LMs: no EAGLE fields are asked of them."""
    d = tmp_path / "small_lm"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "vocab_size": V}))
    info = read_draft_info(str(d))
    assert not info.eagle3 and not info.reduced_vocab and info.aux_layer_ids is None
    SpecRolloutConfig.from_dict({"enable": True, "method": "draft_model", "draft_path": str(d)}).validate(
        write_target(tmp_path))
