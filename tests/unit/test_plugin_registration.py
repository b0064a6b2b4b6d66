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
    assert out.stdout.strip().endswith("verl_specrollout.engine.verl_hooks")


def test_registration_failure_is_loud(monkeypatch, caplog):
    import verl_specrollout
    from verl_specrollout.engine import verl_hooks

    def boom():
        raise RuntimeError("registry moved")

    monkeypatch.setattr(verl_specrollout, "_registered", False)
    monkeypatch.setattr(verl_hooks, "install", boom)
    with caplog.at_level("WARNING", logger="verl_specrollout"):
        verl_specrollout.register()
    assert any("registration with veRL failed" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
