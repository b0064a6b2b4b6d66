"""`python -m verl_specrollout.draft check`: the tiny testbed's EAGLE-3 head fits its target; copies of the
head with one thing wrong each fail with that thing named first; hub ids resolve from the Hugging Face cache
(offline) or fail with one line.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
from hub_rig import fake_hub_cache

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def tb():
    from verl_specrollout.testing.testbed import build_testbed

    return build_testbed("tiny")


def check(draft, target, **env):
    e = dict(os.environ, PYTHONPATH=REPO, **env)
    r = subprocess.run([sys.executable, "-m", "verl_specrollout.draft", "check", "--draft", str(draft),
                        "--target", str(target)], env=e, capture_output=True, text=True, timeout=120, cwd=REPO)
    lines = r.stdout.strip().splitlines()
    assert lines, r.stderr
    return r.returncode, lines


def edited_head(tb, tmp_path, name, edit=None, tensors=None):
    """A copy of the testbed head with config.json edited by `edit(cfg)` and tensors added / replaced."""
    out = tmp_path / name
    shutil.copytree(tb.eagle3_dir, out)
    path = out / "config.json"
    cfg = json.loads(path.read_text())
    if edit:
        edit(cfg)
    path.write_text(json.dumps(cfg, indent=2))
    if tensors:
        from safetensors.torch import load_file, save_file

        sd = load_file(str(out / "model.safetensors"))
        sd.update(tensors)
        save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def reduced_vocab_tensors(d2t):
    import torch

    d2t = torch.as_tensor(d2t, dtype=torch.long)
    return {"d2t": d2t, "lm_head.weight": torch.zeros(len(d2t), 256)}


def test_testbed_head_fits_its_target(tb):
    rc, lines = check(tb.eagle3_dir, tb.target_dir)
    assert rc == 0, lines
    assert len(lines) == 1 and lines[0].startswith(f"OK: draft {tb.eagle3_dir} fits target {tb.target_dir} (")
    assert "vocab 128" in lines[0] and "hidden 256" in lines[0] and "aux layers [1, 2, 3] of 4" in lines[0]


def test_check_reads_no_torch(tb):
    code = ("import sys; from verl_specrollout.draft.check import run_check; "
            f"rc = run_check({str(tb.eagle3_dir)!r}, {str(tb.target_dir)!r}); "
            "assert rc == 0; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=REPO), check=True,
                   capture_output=True, timeout=120, cwd=REPO)


def _set_rope(cfg, theta):
    cfg["rope_theta"] = theta
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}


def _set_aux(ids):
    return lambda cfg: cfg["eagle_config"].update(eagle_aux_hidden_state_layer_ids=ids)


WRONG_HEADS = {
    "vocab": (lambda c: c.update(vocab_size=256, draft_vocab_size=256), None,
              "FAIL: vocab_size: the draft drafts in a vocabulary of 256 ids, the target has 128"),
    "hidden": (lambda c: c.update(target_hidden_size=512), None,
               "FAIL: target_hidden_size: the draft fuses target features of width 512, the target's hidden_size is 256"),
    "aux_out_of_range": (_set_aux([1, 2, 5]), None, "FAIL: aux layer ids [1, 2, 5]: [5] outside 0..4"),
    "aux_default": (lambda c: c.pop("eagle_config"), None,
                    "FAIL: aux layer ids [2, 2, 1] (vLLM's default) repeat a layer"),
    "rope": (lambda c: _set_rope(c, 500000.0), None,
             "FAIL: rope_theta: the draft's is 500000, the target's 10000"),
    # draft id i -> target id 2i, except the last: 63 + 163 = 226
    "d2t_out_of_range": (lambda c: c.update(draft_vocab_size=64), [i + (100 if i == 63 else 0) for i in range(64)],
                         "FAIL: d2t maps 1 draft ids outside the target vocabulary 0..127 (draft id 63 -> target id 226)"),
}


@pytest.mark.parametrize("name", sorted(WRONG_HEADS))
def test_wrong_head_fails_with_its_reason_first(tb, tmp_path, name):
    edit, d2t, verdict = WRONG_HEADS[name]
    head = edited_head(tb, tmp_path, name, edit, reduced_vocab_tensors(d2t) if d2t is not None else None)
    rc, lines = check(head, tb.target_dir)
    assert rc == 1, lines
    assert lines[-1].startswith(verdict), lines
    assert lines[-1].endswith(" more")
    first = lines[-1][len("FAIL: "):].rsplit("; ", 1)[0]
    assert lines[0] == f"ERROR: {first}"  # every problem is listed before the verdict, the first one first
    n_more = int(lines[-1].rsplit("; ", 1)[1].split()[0])
    assert sum(1 for line in lines if line.startswith("ERROR: ")) == n_more + 1


def test_reduced_vocab_head_with_a_good_map_fits(tb, tmp_path):
    head = edited_head(tb, tmp_path, "reduced", lambda c: c.update(draft_vocab_size=64),
                       reduced_vocab_tensors([i for i in range(64)]))  # draft id i -> target id 2i
    rc, lines = check(head, tb.target_dir)
    assert rc == 0 and lines[-1].startswith("OK: ") and "draft vocab 64" in lines[-1], lines


def test_unreadable_draft_is_exit_2_with_one_line(tb, tmp_path):
    rc, lines = check(tmp_path / "nope", tb.target_dir)
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("FAIL: --draft: ") and "not a directory" in lines[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, lines = check(empty, tb.target_dir)
    assert rc == 2 and len(lines) == 1 and "config.json" in lines[0] and "not found" in lines[0], lines


def test_hub_id_offline_not_cached_is_one_clear_line(tb, tmp_path):
    rc, lines = check("acme/missing-eagle3", tb.target_dir, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"))
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith("FAIL: --draft: acme/missing-eagle3 is not a local directory and not in the "
                               f"Hugging Face cache {tmp_path / 'hub'} (HF_HUB_OFFLINE is set")


def test_hub_ids_resolve_from_the_cache(tb, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    head_snap = fake_hub_cache(cache, "acme/tiny-eagle3", tb.eagle3_dir)
    target_snap = fake_hub_cache(cache, "acme/tiny-target", tb.target_dir)
    rc, lines = check("acme/tiny-eagle3", "acme/tiny-target", HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache))
    assert rc == 0, lines
    assert lines[-1].startswith(f"OK: draft {head_snap} fits target {target_snap} ("), lines

    from verl_specrollout.config import SpecRolloutConfig
    from verl_specrollout.draft.resolve import resolve_model_dir

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert resolve_model_dir("acme/tiny-eagle3", "draft") == str(head_snap)
    assert resolve_model_dir(str(tb.eagle3_dir), "draft") == os.path.abspath(tb.eagle3_dir)
    # the plugin's config takes a hub id as draft_path and keeps the snapshot directory
    cfg = SpecRolloutConfig.from_dict({"enable": True, "method": "eagle3", "draft_path": "acme/tiny-eagle3"})
    assert cfg.validate(str(tb.target_dir)).draft_path == str(head_snap)
    with pytest.raises(ValueError, match="specrollout.draft_path: acme/not-there is not a local directory"):
        SpecRolloutConfig.from_dict({"enable": True, "method": "eagle3", "draft_path": "acme/not-there"}).validate()


def test_resolve_cli_prints_the_directory(tb, tmp_path):
    cache = tmp_path / "hub"
    snap = fake_hub_cache(cache, "acme/tiny-target", tb.target_dir)
    env = dict(os.environ, PYTHONPATH=REPO, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache))
    cmd = [sys.executable, "-m", "verl_specrollout.draft", "resolve"]
    r = subprocess.run(cmd + ["acme/tiny-target"], env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == str(snap), r.stderr
    r = subprocess.run(cmd + ["acme/absent", "--what", "MODEL_PATH"], env=env, capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.startswith("FAIL: MODEL_PATH: acme/absent is not")


def test_speculators_layout_is_read(tb, tmp_path):
    """The speculators library's layout: the layer's fields nested, weights under layers.0.*."""
    from safetensors.torch import load_file, save_file

    out = tmp_path / "speculators"
    out.mkdir()
    with open(os.path.join(tb.eagle3_dir, "config.json")) as f:
        cfg = json.load(f)
    layer = {k: v for k, v in cfg.items() if k not in ("eagle_config", "draft_vocab_size", "target_hidden_size")}
    spec = {"speculators_model_type": "eagle3", "architectures": ["Eagle3Speculator"], "transformer_layer_config": layer,
            "draft_vocab_size": cfg["draft_vocab_size"], "target_hidden_size": cfg["target_hidden_size"],
            "eagle_aux_hidden_state_layer_ids": [1, 2, 5], "norm_before_residual": False}
    (out / "config.json").write_text(json.dumps(spec))
    sd = load_file(os.path.join(tb.eagle3_dir, "model.safetensors"))
    save_file({("layers.0." + k[len("midlayer."):] if k.startswith("midlayer.") else k): v for k, v in sd.items()},
              str(out / "model.safetensors"))
    rc, lines = check(out, tb.target_dir)
    assert rc == 1 and lines[-1].startswith("FAIL: aux layer ids [1, 2, 5]: [5] outside 0..4"), lines
    assert len(lines) == 2  # the attention shapes were found under layers.0.* and fit
    spec["eagle_aux_hidden_state_layer_ids"] = [1, 2, 3]
    (out / "config.json").write_text(json.dumps(spec))
    rc, lines = check(out, tb.target_dir)
    assert rc == 0 and lines[-1].startswith("OK: "), lines


def test_aux_layers_cli_prints_what_vllm_feeds_the_head(tb, tmp_path):
    """The recipes pass this to learner.aux_layer_ids: the head's own ids, else vLLM's default."""
    def aux_layers(head):
        r = subprocess.run([sys.executable, "-m", "verl_specrollout.draft", "aux-layers", "--draft", str(head),
                            "--target", str(tb.target_dir)], env=dict(os.environ, PYTHONPATH=REPO),
                           capture_output=True, text=True, timeout=60, cwd=REPO)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    assert aux_layers(tb.eagle3_dir) == "[1,2,3]"
    assert aux_layers(edited_head(tb, tmp_path, "no_ids", lambda c: c.pop("eagle_config"))) == "[2,2,1]"
