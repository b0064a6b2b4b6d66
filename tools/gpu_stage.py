"""What travels to a GPU machine without network to run vLLM 0.24.0 there, and how it travels.

    python tools/gpu_stage.py prune-list                 # the files dropped from the vLLM wheel, and why
    python tools/gpu_stage.py wheels                     # the small wheels staged: name==version (vLLM asks)
    python tools/gpu_stage.py split ARCHIVE DIR          # parts of <= 60 MB and DIR/manifest.json
    python tools/gpu_stage.py join MANIFEST DIR OUT      # checks every part's sha256 and the whole's

tools/gpu_stage_vllm.sh uses it here (PyPI access) to pack, tools/gpu_bringup.py on the GPU machine to
unpack and install (``install``), before anything else is installed there: standard library only.

The device tool moves at most 64 MiB per call (working tree and carried ignored paths together), so
the archive goes in parts of at most PART_BYTES, one per call, and the GPU side checks each part and
the reassembled archive against the manifest before it unpacks anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Iterable, List, Optional

SCHEMA = "specrollout.gpu_stage/1"
PART_BYTES = 60_000_000
ARCHIVE = "vllm-0.24.0-site.tar.xz"

VLLM_VERSION = "0.24.0"
# PyPI's only x86_64 build of 0.24.0 (one abi3 wheel serves CPython 3.8+, so 3.12 on the GPU machine);
# it links libcudart.so.13 and wants torch==2.11.0.
VLLM_WHEEL = "vllm-0.24.0-cp38-abi3-manylinux_2_28_x86_64.whl"
VLLM_WHEEL_SHA256 = "2d2831aeba311292250df0132dbc4d8e9f42c654536eaec48e6fe58acb1822cf"

# Dropped from the wheel for a dense Llama (+ EAGLE-3 head) on sm90. Each import of these is guarded
# in vLLM 0.24.0 (read in the wheel): a missing one logs a warning or marks a backend unavailable.
# Sizes are the wheel's, uncompressed.
PRUNE = (
    ("vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so",
     "182 MB: FlashAttention 2 (Ampere); on sm90 fa_utils.get_flash_attn_version picks FA3 (_vllm_fa3_C, kept)"),
    ("vllm/_moe_C_stable_libtorch.abi3.so",
     "43 MB: fused-MoE kernels; CudaPlatform.import_kernels catches its ImportError, a dense model never calls them"),
    ("vllm/vllm-rs", "35 MB: the Rust front end binary (VLLM_USE_RUST_FRONTEND, off by default)"),
    ("vllm/third_party/deep_gemm/",
     "32 MB: FP8 GEMMs (per-Python .so files and CUTLASS headers); utils/deep_gemm.py imports it lazily, guarded"),
    ("vllm/third_party/fmha_sm100/",
     "28 MB: Blackwell sparse attention headers, used by MiniMax-M3 only"),
    ("vllm/vllm_flash_attn/cute/",
     "2 MB: FlashAttention 4 (CuTe DSL, Blackwell; needs nvidia-cutlass-dsl, not staged)"),
)
# Kept, named so a later prune does not drop them: the custom ops (rms_norm, rotary, cache writes, ...),
# FA3 for Hopper, the sleep-mode allocator and triton kernels.
KEEP = ("vllm/_C_stable_libtorch.abi3.so", "vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so",
        "vllm/cumem_allocator.abi3.so", "vllm/third_party/triton_kernels/")

# What a torch-2.11 CUDA image (python 3.12) is assumed to hold: torch's own requirements and the usual
# extras of such an image. Not staged; tools/gpu_bringup.py reports each one it finds missing.
IMAGE_HAS = ("torch", "triton", "numpy", "typing_extensions", "filelock", "fsspec", "jinja2", "markupsafe", "sympy",
             "mpmath", "networkx", "setuptools", "packaging", "pyyaml", "requests", "urllib3", "idna", "certifi",
             "charset_normalizer", "pillow", "psutil", "tqdm")

# Staged wheels: (distribution, pinned version, what vLLM 0.24.0's METADATA asks for, or "via X": a
# requirement of X). The set: every distribution an import of vLLM, its engine modules for a Llama with an
# EAGLE-3 head and our plugin needed in a python holding IMAGE_HAS only (tools/gpu_stage_probe.py), closed
# over their own requirements; the versions: pip's resolution of vllm==0.24.0 + scipy + torch==2.11.0 for
# CPython 3.12 on manylinux x86_64 (2026-12-07). On the GPU a wheel is installed only where the image lacks
# its distribution or holds a version outside the requirement.
WHEELS = (
    ("aiohappyeyeballs", "2.7.1", "via aiohttp"),
    ("aiohttp", "3.14.5", ">=3.13.3"),
    ("aiosignal", "1.4.0", "via aiohttp"),
    ("annotated-doc", "0.0.7", "via fastapi"),
    ("annotated-types", "0.8.0", "via pydantic"),
    ("anyio", "4.16.0", "via httpx"),
    ("apache-tvm-ffi", "0.1.9", "==0.1.9"),
    ("attrs", "26.1.0", "via aiohttp"),
    ("cachetools", "8.0.3", ""),
    ("cbor2", "6.3.0", ""),
    ("click", "8.5.1", "via huggingface_hub"),
    ("cloudpickle", "3.1.3", ""),
    ("einops", "0.8.2", ""),
    ("fastapi", "0.136.3", "<0.137.0,>=0.133.0"),
    ("frozenlist", "1.8.0", "via aiohttp"),
    ("h11", "0.16.0", "via httpcore"),
    ("hf-xet", "1.8.0", "via huggingface_hub"),
    ("httpcore", "1.0.9", "via httpx"),
    ("httpcore2", "2.17.0", "via httpx2"),
    ("httpx", "0.29.0", "via huggingface_hub"),
    ("httpx2", "2.17.0", "via huggingface_hub"),
    ("huggingface_hub", "2.5.0", "via transformers"),
    ("jiter", "0.19.0", "via openai"),
    ("kernels", "0.19.1", "via transformers"),
    ("llguidance", "1.7.6", "<1.8.0,>=1.7.0"),
    ("markdown-it-py", "4.3.0", "via rich"),
    ("mdurl", "0.1.2", "via markdown-it-py"),
    ("msgspec", "0.23.0", ""),
    ("multidict", "7.2.1", "via aiohttp"),
    ("openai", "3.63.0", ">=2.0.0"),
    ("openai-harmony", "0.0.8", ">=0.0.3"),
    ("partial-json-parser", "0.2.1.1.post7", ""),
    ("prometheus_client", "0.26.0", ">=0.18.0"),
    ("propcache", "0.5.4", "via aiohttp"),
    ("py-cpuinfo", "9.0.0", ""),
    ("pybase64", "1.5.1", ""),
    ("pydantic", "2.14.4", ">=2.12.0"),
    ("pydantic_core", "2.50.5", "via pydantic"),
    ("Pygments", "2.21.0", "via rich"),
    ("pyzmq", "27.3.0", ">=25.0.0"),
    ("regex", "2026.12.2", ""),
    ("rich", "15.0.0", "via typer"),
    ("safetensors", "0.8.0", ">=0.6.2"),
    ("scipy", "1.18.1", "via verl-specrollout"),
    ("shellingham", "1.5.4", "via typer"),
    ("sniffio", "1.3.1", "via openai"),
    ("starlette", "1.10.0", ">=1.0.1"),
    ("tokenizers", "0.23.3", ">=0.21.1"),
    ("tomlkit", "0.15.3", "via kernels"),
    ("transformers", "5.25.0", ">=5.5.3"),
    ("truststore", "0.10.5", "via httpx2"),
    ("typer", "0.29.3", "via transformers"),
    ("typing-inspection", "0.4.5", "via pydantic"),
    ("uvloop", "0.23.0", "via fastapi[standard]"),
    ("xgrammar", "0.2.3", "<1.0.0,>=0.2.1"),
    ("yarl", "1.25.1", "via aiohttp"),
)


def prune_reason(path: str) -> Optional[str]:
    """Why `path` (a name inside the vLLM wheel) is left out, or None when it is kept."""
    for prefix, why in PRUNE:
        if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
            return why
    return None


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


class StageError(RuntimeError):
    """A missing or corrupt part, a manifest that does not describe the parts, a bad part size."""


def part_name(archive: str, index: int) -> str:
    return f"{archive}.part{index:02d}"


def split_file(path: str, out_dir: str, part_bytes: int = PART_BYTES) -> List[dict]:
    """Cut `path` into `out_dir`/<name>.partNN of at most `part_bytes` each; [{name, bytes, sha256}]."""
    if part_bytes <= 0:
        raise StageError(f"part size must be positive, got {part_bytes}")
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.basename(path)
    parts = []
    with open(path, "rb") as src:
        while True:
            block = src.read(part_bytes)
            if not block and parts:
                break
            name = part_name(base, len(parts) + 1)
            with open(os.path.join(out_dir, name), "wb") as dst:
                dst.write(block)
            parts.append({"name": name, "bytes": len(block), "sha256": hashlib.sha256(block).hexdigest()})
            if len(block) < part_bytes:
                break
    # A part left over from an earlier, longer archive would be picked up by nothing, but would travel
    # with a `carry` of the whole folder: remove it.
    keep = {p["name"] for p in parts}
    for name in os.listdir(out_dir):
        if name.startswith(base + ".part") and name not in keep:
            os.remove(os.path.join(out_dir, name))
    return parts


def manifest(archive_path: str, parts: List[dict], **extra) -> dict:
    return {"schema": SCHEMA, "archive": os.path.basename(archive_path), "bytes": os.path.getsize(archive_path),
            "sha256": sha256_file(archive_path), "part_bytes_max": max(p["bytes"] for p in parts),
            "parts": parts, **extra}


def write_json(path: str, payload: dict) -> None:
    """Atomic: a reader never sees half a file (the bring-up rewrites its JSON after every point)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def read_manifest(path: str) -> dict:
    try:
        with open(path) as f:
            m = json.load(f)
    except FileNotFoundError:
        raise StageError(f"{path}: no manifest (run tools/gpu_stage_vllm.sh here and carry it along)") from None
    except json.JSONDecodeError as exc:
        raise StageError(f"{path}: not JSON ({exc})") from None
    if not isinstance(m, dict) or m.get("schema") != SCHEMA:
        raise StageError(f"{path}: schema {m.get('schema') if isinstance(m, dict) else None!r}, expected {SCHEMA!r}")
    for key in ("archive", "bytes", "sha256", "parts"):
        if key not in m:
            raise StageError(f"{path}: no {key!r}")
    if not m["parts"] or any(set(p) < {"name", "bytes", "sha256"} for p in m["parts"]):
        raise StageError(f"{path}: parts must be a non-empty list of {{name, bytes, sha256}}")
    return m


def check_parts(m: dict, parts_dir: str) -> List[str]:
    """Every part present with its size and sha256; raises StageError naming each one that is not."""
    problems = []
    for p in m["parts"]:
        path = os.path.join(parts_dir, p["name"])
        if not os.path.isfile(path):
            problems.append(f"{p['name']} missing")
        elif os.path.getsize(path) != p["bytes"]:
            problems.append(f"{p['name']} has {os.path.getsize(path)} bytes, manifest says {p['bytes']}")
        elif sha256_file(path) != p["sha256"]:
            problems.append(f"{p['name']} sha256 differs from the manifest (a partial or stale copy)")
    if problems:
        raise StageError(f"{parts_dir}: " + "; ".join(problems))
    return [os.path.join(parts_dir, p["name"]) for p in m["parts"]]


def reassemble(m: dict, parts_dir: str, out_path: str) -> str:
    """Concatenate the checked parts into `out_path` and check the whole; idempotent (a whole archive with
    the manifest's sha256 is reused)."""
    if os.path.isfile(out_path) and os.path.getsize(out_path) == m["bytes"] and sha256_file(out_path) == m["sha256"]:
        return out_path
    paths = check_parts(m, parts_dir)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = f"{out_path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as dst:
        for path in paths:
            with open(path, "rb") as src:
                while True:
                    block = src.read(1 << 20)
                    if not block:
                        break
                    dst.write(block)
    got = sha256_file(tmp)
    if got != m["sha256"]:
        os.remove(tmp)
        raise StageError(f"reassembled {m['archive']} has sha256 {got[:16]}..., manifest says {m['sha256'][:16]}...")
    os.replace(tmp, out_path)
    return out_path


def wheel_lines(wheels: Iterable[tuple] = WHEELS) -> List[str]:
    return [f"{name}=={version}" for name, version, _ in wheels]


def _norm(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def wheel_entries(wheels_dir: str, wheels: Iterable[tuple] = WHEELS) -> List[dict]:
    """The staged wheel file of every pinned distribution: [{name, version, requires, file, bytes, sha256}].
    Raises StageError naming the ones without a file."""
    files = sorted(f for f in os.listdir(wheels_dir) if f.endswith(".whl")) if os.path.isdir(wheels_dir) else []
    out, missing = [], []
    for name, version, requires in wheels:
        match = [f for f in files if _norm(f.split("-")[0]) == _norm(name) and f.split("-")[1] == version]
        if not match:
            missing.append(f"{name}=={version}")
            continue
        path = os.path.join(wheels_dir, match[0])
        out.append({"name": name, "version": version, "requires": requires, "file": match[0],
                    "bytes": os.path.getsize(path), "sha256": sha256_file(path)})
    if missing:
        raise StageError(f"{wheels_dir}: no wheel for {', '.join(missing)}")
    return out


def needs_glibc(wheels_dir: str, *more: str) -> str:
    """The glibc the staged files need, e.g. "2.31": per file the lowest manylinux tag it carries (it
    installs there), over the files the highest."""
    import re

    names = list(more) + (os.listdir(wheels_dir) if os.path.isdir(wheels_dir) else [])
    need = (2, 17)
    for n in names:
        tags = [(int(a), int(b)) for a, b in re.findall(r"manylinux_(\d+)_(\d+)_", n)]
        tags += [(2, 17)] if "manylinux2014" in n else []
        if tags:
            need = max(need, min(tags))
    return f"{need[0]}.{need[1]}"


def extract_pruned(wheel: str, out_dir: str) -> dict:
    """Unpack the vLLM wheel into `out_dir` (a site-packages tree) without the PRUNE entries."""
    import zipfile

    kept = 0
    pruned: dict = {}
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            why = prune_reason(info.filename)
            if why is not None:
                prefix = next(p for p, w in PRUNE if w == why)
                pruned[prefix] = pruned.get(prefix, 0) + info.file_size
                continue
            z.extract(info, out_dir)
            if info.filename.endswith(".so") or info.filename.endswith("/vllm-rs"):
                os.chmod(os.path.join(out_dir, info.filename), 0o755)
            kept += info.file_size
    missing = [k for k in KEEP if not os.path.exists(os.path.join(out_dir, k))]
    if missing:
        raise StageError(f"{wheel}: the wheel lacks {missing}, which a dense Llama on sm90 needs")
    return {"kept_bytes": kept,
            "pruned": [{"path": p, "bytes": pruned.get(p, 0), "why": w} for p, w in PRUNE]}


DEVICE_CALL_BYTES = 64 * 2**20


def call_plan(m: dict, testbed_bytes: int, tree_bytes: int, limit: int = DEVICE_CALL_BYTES) -> List[dict]:
    """One device-tool call per part, in order; the last call also runs the bring-up. The testbed files go
    with the last call where they fit beside its part (they are read only by the run), else with the
    first call they fit in, else in a call of their own before the run. Raises StageError when a part
    alone does not fit beside the working tree."""
    room = limit - tree_bytes
    calls = [{"carry": [p["name"]], "bytes": p["bytes"], "run": False} for p in m["parts"]]
    if any(c["bytes"] > room for c in calls):
        raise StageError(f"a part of {max(c['bytes'] for c in calls)} bytes does not fit beside the {tree_bytes}-byte "
                         f"working tree in one call of {limit} bytes")
    calls[-1]["run"] = True
    for c in reversed(calls):
        if c["bytes"] + testbed_bytes <= room:
            c["carry"].append("testbed")
            c["bytes"] += testbed_bytes
            break
    else:
        calls.insert(len(calls) - 1, {"carry": ["testbed"], "bytes": testbed_bytes, "run": False})
    return calls


# ------------------------------------------------------------------------------ on the GPU machine

def log(msg: str) -> None:
    print(f"[stage] {msg}", flush=True)


def dist_version(name: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def satisfies(version: str, requires: str) -> bool:
    """Whether an installed `version` meets vLLM's requirement; "via X" (a dependency of a dependency) and
    a requirement `packaging` cannot read only ask for presence."""
    if not requires or requires.startswith("via"):
        return True
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version

        return Version(version) in SpecifierSet(requires)
    except Exception:
        return True


def install_wheels(files: List[str], site: str) -> None:
    import subprocess

    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile",
                        "--disable-pip-version-check", "--target", site, *files], check=True,
                       stdout=subprocess.DEVNULL)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        # An image without pip: a wheel is a zip of its site-packages tree (its .data scripts are not needed).
        import zipfile

        log(f"pip install --target failed ({exc}); unzipping the wheels instead")
        for f in files:
            with zipfile.ZipFile(f) as z:
                z.extractall(site)


def write_plugin_dist_info(site: str, repo: str) -> None:
    """Our entry points (vllm.general_plugins, verl.plugins) for the source tree on PYTHONPATH, as
    `pip install -e .` would register them but without a build backend (no network for build isolation)."""
    import tomllib

    with open(os.path.join(repo, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    d = os.path.join(site, f"verl_specrollout-{project['version']}.dist-info")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "METADATA"), "w") as f:
        f.write(f"Metadata-Version: 2.1\nName: verl-specrollout\nVersion: {project['version']}\n")
    with open(os.path.join(d, "entry_points.txt"), "w") as f:
        for group, entries in project.get("entry-points", {}).items():
            f.write(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()) + "\n")
    with open(os.path.join(d, "top_level.txt"), "w") as f:
        f.write("verl_specrollout\n")


def install(stage_dir: str, site: str, work_dir: str, repo: str, record: dict) -> None:
    """Reassemble and check the parts, unpack vLLM into `site`, install the staged wheels the image lacks
    (or holds at a version vLLM does not accept) and register our plugin. Idempotent: a `site` stamped
    with the manifest's archive is kept."""
    import shutil
    import tarfile
    import time

    t0 = time.monotonic()
    parts = os.path.join(stage_dir, "parts")
    m = read_manifest(os.path.join(parts, "manifest.json"))
    record["archive_sha256"] = m["sha256"]
    stamp = os.path.join(site, ".specrollout_stage")
    if os.path.isfile(stamp) and open(stamp).read().strip() == m["sha256"]:
        log(f"{site} already holds archive {m['sha256'][:16]}")
        return
    archive = reassemble(m, parts, os.path.join(work_dir, m["archive"]))
    log(f"{m['archive']}: {len(m['parts'])} parts, sha256 ok ({time.monotonic() - t0:.1f}s)")
    unpack = os.path.join(work_dir, "unpack")
    for d in (unpack, site):
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(unpack)
    with tarfile.open(archive, "r:xz") as tar:  # liblzma through the standard library: no xz binary needed
        tar.extractall(unpack, filter="data")
    os.rename(os.path.join(unpack, "site"), site)
    with open(os.path.join(unpack, "stage_info.json")) as f:
        info = json.load(f)
    todo, present = [], []
    for w in info["wheels"]:
        have = dist_version(w["name"])
        if have is not None and satisfies(have, w["requires"]):
            present.append(f"{w['name']}=={have}")
        else:
            todo.append(os.path.join(unpack, "wheels", w["file"]))
    if todo:
        install_wheels(todo, site)
    record["wheels_installed"] = [os.path.basename(f) for f in todo]
    record["wheels_present"] = present
    record["image_missing"] = [n for n in info.get("image_has", []) if dist_version(n) is None]
    write_plugin_dist_info(site, repo)
    with open(stamp, "w") as f:
        f.write(m["sha256"] + "\n")
    log(f"unpacked into {site}: {len(todo)} wheels installed, {len(present)} already in the image "
        f"({time.monotonic() - t0:.1f}s)")


def activate_site(site: str, repo: str) -> None:
    """`site` and the source tree first on this process's path and on PYTHONPATH (for vLLM's subprocesses)."""
    import importlib

    for path in (site, repo):
        if path not in sys.path:
            sys.path.insert(0, path)
        sys.path_importer_cache.pop(path, None)  # PYTHONPATH may have named the site before it existed
    importlib.invalidate_caches()
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in (site, repo)]
    os.environ["PYTHONPATH"] = os.pathsep.join([site, repo] + rest)
    # No flashinfer in the stage: vLLM's sampler uses its PyTorch top-k/top-p.
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")


def main(argv: Optional[list] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = argv[0] if argv else ""
    if cmd == "prune-list" and len(argv) == 1:
        for prefix, why in PRUNE:
            print(f"{prefix}\t{why}")
        return 0
    if cmd == "wheels" and len(argv) == 1:
        print("\n".join(wheel_lines()))
        return 0
    if cmd == "split" and len(argv) == 3:
        archive, out_dir = argv[1], argv[2]
        parts = split_file(archive, out_dir)
        extra = {}
        info = os.path.join(out_dir, "stage_info.json")
        if os.path.isfile(info):  # what gpu_stage_vllm.sh recorded about the contents
            with open(info) as f:
                extra = json.load(f)
        write_json(os.path.join(out_dir, "manifest.json"), manifest(archive, parts, **extra))
        for p in parts:
            print(f"[stage] {p['name']}: {p['bytes'] / 1e6:.1f} MB sha256 {p['sha256'][:16]}")
        return 0
    if cmd == "join" and len(argv) == 4:
        try:
            out = reassemble(read_manifest(argv[1]), argv[2], argv[3])
        except StageError as exc:
            print(f"[stage] {exc}", file=sys.stderr)
            return 2
        print(f"[stage] {out}: sha256 ok")
        return 0
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
