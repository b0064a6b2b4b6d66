"""`import verl` must route the "vllm" rollout through our replica (entry point works)."""

import subprocess
import sys


def test_import_verl_registers_our_replica():
    code = (
        "import verl, verl_specrollout\n"
        "from verl.workers.rollout.replica import RolloutReplicaRegistry as R\n"
        "assert verl_specrollout._registered\n"
        "print(R._registry['vllm'].__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("verl_specrollout.verl_adapter.registration")


def test_registration_failure_is_loud(monkeypatch, caplog):
    import verl_specrollout
    from verl_specrollout.verl_adapter import registration

    def boom():
        raise RuntimeError("registry moved")

    monkeypatch.setattr(verl_specrollout, "_registered", False)
    monkeypatch.setattr(registration, "install", boom)
    with caplog.at_level("WARNING", logger="verl_specrollout"):
        verl_specrollout.register()
    assert any("registration with veRL failed" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def _imported_modules_after(code: str, env_extra: dict) -> set:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("SPECROLLOUT_PLATFORM", "VERL_PLATFORM")}
    env.update(env_extra)
    code += "\nimport sys\nprint('\\n'.join(m for m in sys.modules if m.startswith('verl_specrollout')))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(out.stdout.split())


def test_gpu_process_imports_neither_the_test_rig_nor_the_cpu_platform():
    # What a GPU node does: import veRL (our verl.plugins entry point runs) and let vLLM load its
    # general plugins on a non-CPU platform. Nothing of verl_specrollout.testing or .cpu_platform
    # may be imported.
    code = (
        "import verl, verl_specrollout\n"
        "assert verl_specrollout._registered\n"
        "from verl_specrollout.vllm_adapter import engine_patches\n"
        "engine_patches._vllm_runs_on_cpu = lambda: False\n"
        "engine_patches.register()\n"
    )
    mods = _imported_modules_after(code, {})
    assert "verl_specrollout.register_rollout" in mods
    assert "verl_specrollout.vllm_adapter.k0_skip" in mods
    off_gpu = [m for m in mods if m.startswith(("verl_specrollout.testing", "verl_specrollout.cpu_platform"))]
    assert not off_gpu, off_gpu


def test_cpu_platform_is_imported_when_asked_for():
    mods = _imported_modules_after("import verl, verl_specrollout\n", {"SPECROLLOUT_PLATFORM": "cpu"})
    assert "verl_specrollout.cpu_platform.verl_platform" in mods
