"""recipes/cpu_grpo.sh up to veRL's command line, on a cold testbed cache, in seconds.

The recipe takes the testbed's paths from ``python -m verl_specrollout.testing.testbed --print-paths``.
A first build prints progress (Python prints, raw writes to file descriptor 1, child processes); none of
it may reach the ``eval``. Here the build is replaced by a fake that prints all three kinds and writes
an empty testbed into a fresh SPECROLLOUT_CACHE; ``python3 -m verl.trainer.main_ppo`` is replaced by a
shim that records its arguments.
"""

import json
import os
import shlex
import signal
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE = os.path.join(REPO, "recipes", "cpu_grpo.sh")

# The fake build: the real cache logic (lock, temp dir, rename) around a build that only talks.
FAKE_BUILD = r'''
import json, os, subprocess, sys
from verl_specrollout.testing.testbed import cache

def fake_build_into(root, recipe):
    print("[testbed] building tokenizer ... (python print)", flush=True)
    os.write(1, b"[testbed] raw write to fd 1\n")
    subprocess.run(["echo", "[testbed] child process output"], check=True)
    for d in ("target", "eagle3", "draft_lm", "tokenizer", "data"):
        os.makedirs(os.path.join(root, d))
    with open(os.path.join(root, "stats.json"), "w") as f:
        json.dump({"build_seconds": 0.1}, f)

cache.build_into = fake_build_into
'''


def _run(cmd, env, timeout=300):
    """subprocess.run in its own process group, all of which is killed on a timeout."""
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def _fake_build_main(args, env):
    code = FAKE_BUILD + ("import runpy; sys.argv = ['testbed'] + sys.argv[1:]; "
                         "runpy.run_module('verl_specrollout.testing.testbed', run_name='__main__')")
    return _run([sys.executable, "-c", code, *args], env)


@pytest.fixture()
def cold_env(tmp_path):
    env = dict(os.environ, SPECROLLOUT_CACHE=str(tmp_path / "cache with space"), PYTHONPATH=REPO)
    env.pop("MODEL_PATH", None)
    env.pop("DATA_DIR", None)
    return env


def test_print_paths_keeps_build_progress_off_stdout(cold_env, tmp_path):
    r = _fake_build_main(["--size", "tiny", "--print-paths"], cold_env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines and all(line.startswith("TESTBED_") for line in lines), r.stdout
    for progress in ("python print", "raw write to fd 1", "child process output"):
        assert progress in r.stderr and progress not in r.stdout
    # what bash's eval makes of it (the cache path has a space: the values are quoted)
    shown = subprocess.run(["bash", "-c", 'eval "$V"; printf "%s\\n" "$TESTBED_TARGET_DIR" "$TESTBED_DATA_DIR"'],
                           env=dict(os.environ, V=r.stdout), capture_output=True, text=True, check=True)
    target, data = shown.stdout.splitlines()
    assert target.endswith("/target") and os.path.isdir(target) and " " in target
    assert data.endswith("/data") and os.path.isdir(data)
    # second call: cached, same paths, still nothing else on stdout
    again = _fake_build_main(["--size", "tiny", "--print-paths"], cold_env)
    assert again.returncode == 0 and again.stdout == r.stdout


def test_default_output_is_still_json_last_line(cold_env):
    r = _fake_build_main(["--size", "tiny"], cold_env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["target_dir"].endswith("/target") and "stats" not in out


def _shim_dir(tmp_path, args_file):
    """A `python3` first on PATH: records veRL's arguments instead of training, fakes the testbed build,
    passes anything else to this interpreter."""
    shim = tmp_path / "bin"
    shim.mkdir()
    fake = tmp_path / "fake_testbed.py"
    fake.write_text(FAKE_BUILD + "import runpy; sys.argv = ['testbed'] + sys.argv[1:]\n"
                    "runpy.run_module('verl_specrollout.testing.testbed', run_name='__main__')\n")
    py = shlex.quote(sys.executable)
    (shim / "python3").write_text(
        "#!/usr/bin/env bash\n"
        'if [[ "${1:-}" == -m && "${2:-}" == verl.trainer.main_ppo ]]; then\n'
        f'    shift 2; printf "%s\\n" "$@" > {shlex.quote(str(args_file))}; exit 0\n'
        "fi\n"
        'if [[ "${1:-}" == -m && "${2:-}" == verl_specrollout.testing.testbed ]]; then\n'
        f'    shift 2; exec {py} {shlex.quote(str(fake))} "$@"\n'
        "fi\n"
        f'exec {py} "$@"\n')
    (shim / "python3").chmod(0o755)
    return str(shim)


@pytest.mark.parametrize("use_v1", [None, "True", "False"])
def test_recipe_reaches_verl_with_testbed_paths_on_a_cold_cache(cold_env, tmp_path, use_v1):
    args_file = tmp_path / "main_ppo_args.txt"
    env = dict(cold_env, PATH=_shim_dir(tmp_path, args_file) + os.pathsep + os.environ.get("PATH", ""),
               OUT=str(tmp_path / "out"), STEPS="1")
    if use_v1:
        env["USE_V1"] = use_v1
    r = _run(["bash", RECIPE], env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    args = args_file.read_text().splitlines()
    model = next(a for a in args if a.startswith("actor_rollout_ref.model.path="))
    model_dir = model.split("=", 1)[1]
    assert model_dir.endswith("/target") and os.path.isdir(model_dir), model
    train = next(a for a in args if a.startswith("data.train_files="))
    assert train.split("=", 1)[1] == os.path.join(os.path.dirname(model_dir), "data", "train.parquet")
    assert "trainer.total_training_steps=1" in args
    tq = "transfer_queue.backend.SimpleStorage.num_data_storage_units=2"
    if use_v1 != "False":  # veRL's default trainer unless told
        assert "trainer.use_v1=True" in args and tq in args
    else:
        assert "trainer.use_v1=False" in args and tq not in args


def test_recipe_keeps_given_model_and_data(tmp_path):
    """MODEL_PATH and DATA_DIR given: no testbed build at all."""
    args_file = tmp_path / "main_ppo_args.txt"
    env = dict(os.environ, PATH=_shim_dir(tmp_path, args_file) + os.pathsep + os.environ.get("PATH", ""),
               OUT=str(tmp_path / "out"), MODEL_PATH="/models/m", DATA_DIR="/data/d",
               SPECROLLOUT_CACHE=str(tmp_path / "never"), PYTHONPATH=REPO)
    r = _run(["bash", RECIPE], env)
    assert r.returncode == 0, r.stderr[-3000:]
    args = args_file.read_text().splitlines()
    assert "actor_rollout_ref.model.path=/models/m" in args and "data.train_files=/data/d/train.parquet" in args
    assert not os.path.exists(tmp_path / "never")
