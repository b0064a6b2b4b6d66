"""The GPU recipes up to veRL's command line, on the tiny testbed (no GPU: veRL is replaced by a shim
that records its arguments): hub ids resolve to local directories (single node), the preflight stops a
head that does not fit before anything starts, and the learner gets the aux layers vLLM feeds the head.
"""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys

import pytest
from hub_rig import fake_hub_cache

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = "+actor_rollout_ref.rollout.custom.specrollout."


@pytest.fixture(scope="module")
def tb():
    from verl_specrollout.testing.testbed import build_testbed

    return build_testbed("tiny")


def _shim(tmp_path):
    """`python3` first on PATH: records veRL's arguments instead of training; anything else runs here."""
    shim, args_file = tmp_path / "bin", tmp_path / "main_ppo_args.txt"
    shim.mkdir()
    (shim / "python3").write_text(
        "#!/usr/bin/env bash\n"
        'if [[ "${1:-}" == -m && "${2:-}" == verl.trainer.main_ppo ]]; then\n'
        f'    shift 2; printf "%s\\n" "$@" > {shlex.quote(str(args_file))}; exit 0\n'
        "fi\n"
        f'exec {shlex.quote(sys.executable)} "$@"\n')
    (shim / "python3").chmod(0o755)
    return str(shim), args_file


def run_recipe(name, tmp_path, **env):
    shim, args_file = _shim(tmp_path)
    e = dict(os.environ, PATH=shim + os.pathsep + os.environ.get("PATH", ""), PYTHONPATH=REPO,
             OUT=str(tmp_path / "out"), HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"), **env)
    p = subprocess.Popen(["bash", os.path.join(REPO, "recipes", name)], env=e, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True)
    try:
        out, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise
    args = args_file.read_text().splitlines() if args_file.exists() else None
    return p.returncode, out, err, args


def arg(args, key):
    return next(a.split("=", 1)[1] for a in args if a.startswith(key + "="))


@pytest.mark.parametrize("recipe", ["grpo_qwen2.5_7b_gsm8k_eagle3.sh", "grpo_qwen2.5_7b_math_eagle3.sh"])
def test_single_node_recipe_resolves_hub_ids_and_passes_the_preflight(tb, tmp_path, recipe):
    target_snap = fake_hub_cache(tmp_path / "hub", "acme/tiny-target", tb.target_dir)
    head_snap = fake_hub_cache(tmp_path / "hub", "acme/tiny-eagle3", tb.eagle3_dir)
    rc, out, err, args = run_recipe(recipe, tmp_path, MODEL_PATH="acme/tiny-target", DRAFT_PATH="acme/tiny-eagle3")
    assert rc == 0, err[-3000:]
    assert f"OK: draft {head_snap} fits target {target_snap}" in out
    assert arg(args, "actor_rollout_ref.model.path") == str(target_snap)  # a directory, not the hub id
    assert arg(args, SPEC + "draft_path") == str(head_snap)
    assert arg(args, SPEC + "learner.aux_layer_ids") == "[1,2,3]"
    assert not any(a.startswith("trainer.use_v1") for a in args)  # veRL's default (V1) trainer


def test_recipe_stops_on_a_head_that_does_not_fit(tb, tmp_path):
    head = tmp_path / "rope"
    shutil.copytree(tb.eagle3_dir, head)
    cfg = json.loads((head / "config.json").read_text())
    cfg["rope_theta"] = 500000.0
    cfg["rope_parameters"]["rope_theta"] = 500000.0
    (head / "config.json").write_text(json.dumps(cfg))
    rc, out, err, args = run_recipe("grpo_qwen2.5_7b_gsm8k_eagle3.sh", tmp_path, MODEL_PATH=str(tb.target_dir),
                                    DRAFT_PATH=str(head))
    assert rc == 1 and args is None  # veRL never started
    assert out.strip().splitlines()[-1].startswith("FAIL: rope_theta: the draft's is 500000, the target's 10000")


def test_recipe_stops_with_one_line_when_offline_and_not_cached(tb, tmp_path):
    rc, out, err, args = run_recipe("grpo_qwen2.5_7b_gsm8k_eagle3.sh", tmp_path, DRAFT_PATH=str(tb.eagle3_dir))
    assert rc == 2 and args is None
    fail = [line for line in err.splitlines() if line.startswith("FAIL: ")]
    assert fail == [f"FAIL: MODEL_PATH: Qwen/Qwen2.5-7B-Instruct is not a local directory and not in the Hugging "
                    f"Face cache {tmp_path / 'hub'} (HF_HUB_OFFLINE is set, so nothing is downloaded); fetch it where "
                    "there is network (`huggingface-cli download Qwen/Qwen2.5-7B-Instruct`, same HF_HUB_CACHE) or "
                    "pass a local directory"]


def test_multinode_recipe_keeps_hub_ids_for_every_node_and_runs_the_preflight(tb, tmp_path):
    fake_hub_cache(tmp_path / "hub", "acme/tiny-target", tb.target_dir)
    fake_hub_cache(tmp_path / "hub", "acme/tiny-eagle3", tb.eagle3_dir)
    rc, out, err, args = run_recipe("grpo_multinode_eagle3.sh", tmp_path, MODEL_PATH="acme/tiny-target",
                                    DRAFT_PATH="acme/tiny-eagle3", PUBLISH_DIR=str(tmp_path / "publish"))
    assert rc == 0, err[-3000:]
    assert out.strip().splitlines()[-1].startswith("OK: draft ")
    assert arg(args, "actor_rollout_ref.model.path") == "acme/tiny-target"
    assert arg(args, SPEC + "draft_path") == "acme/tiny-eagle3"
    assert arg(args, SPEC + "learner.aux_layer_ids") == "[1,2,3]"
