#!/usr/bin/env bash
# Stage vLLM 0.24.0 (veRL 0.9.1's pin) for a GPU machine that has torch 2.11 and python 3.12 but no vLLM
# and no network. Runs HERE, where PyPI answers; tools/gpu_bringup.sh unpacks the result on the GPU.
#
#     flock /tmp/heavy.lock nice -n 10 bash tools/gpu_stage_vllm.sh            # everything, idempotent
#     bash tools/gpu_stage_vllm.sh --check   # also import vLLM from the staged tree (tools/gpu_stage_probe.py)
#
# What it makes, under $STAGE_DIR (default .gpu_stage/, git-ignored):
#   download/   the vLLM wheel (279 MB, sha256 pinned in tools/gpu_stage.py) and the small wheels (cp312)
#   tree/       site/ (the vLLM wheel unpacked without FA2, MoE, the Rust front end, deep_gemm and the
#               Blackwell-only files: tools/gpu_stage.py PRUNE), wheels/, stage_info.json
#   parts/      vllm-0.24.0-site.tar.xz.partNN (<= 60 MB each) and manifest.json (sha256 of each part and
#               of the whole archive): what the device tool carries, one part per call
#   testbed/    the trained testbed target and EAGLE-3 head (medium if built, else tiny) in bfloat16;
#               gpu_bringup.py expands them to the 7B shape on the GPU
#   calls.json  which call carries what (tools/gpu_stage.py call_plan), also printed at the end
#
# Each step is skipped when its output is there and its inputs are unchanged (stamps in tree/ and parts/);
# the tar is deterministic (sorted names, mtime 0, owner 0), so a rerun makes the same archive bytes.
#
# Measured here on 2026-12-07 (2 shared CPU cores, PyPI at ~50 MB/s): vLLM wheel 279 MB in 3 s, the 56
# small wheels 132.7 MB in 10 s (xgrammar 45 MB, scipy 35 MB, transformers 14 MB lead), 299.7 MB of vLLM
# kept after pruning, xz -9 of it all 335 s -> 219.2 MiB in 4 parts (60, 60, 60, 49.9 MB), testbed (tiny,
# bf16) 7.1 MiB; 351 s in all, 6 s for a rerun with nothing to redo. Device calls: 4 (parts 1-3, then part
# 4 + testbed + the run; docs/gpu.md).
set -euo pipefail
cd "$(dirname "$0")/.."

STAGE=${STAGE_DIR:-.gpu_stage}
PY=${PYTHON:-.venv/bin/python}   # any python with pip: the downloads only need the pip client
XZ_LEVEL=${XZ_LEVEL:-9}
CHECK=0
for arg in "$@"; do
  case "$arg" in
    --check) CHECK=1 ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
  esac
done
STAGE_PY="$PY tools/gpu_stage.py"
log() { echo "[stage] $*"; }
t_all=$(date +%s)
declare -A SECONDS_OF

mkdir -p "$STAGE/download" "$STAGE/wheels" "$STAGE/tree" "$STAGE/parts"

# 1. The vLLM wheel: PyPI's one x86_64 build of 0.24.0 (cp38-abi3, manylinux_2_28).
t0=$(date +%s)
WHEEL=$($PY -c "import sys; sys.path.insert(0, 'tools'); import gpu_stage; print(gpu_stage.VLLM_WHEEL)")
WHEEL_SHA=$($PY -c "import sys; sys.path.insert(0, 'tools'); import gpu_stage; print(gpu_stage.VLLM_WHEEL_SHA256)")
if [ -f "$STAGE/download/$WHEEL" ] && [ "$(sha256sum "$STAGE/download/$WHEEL" | cut -d' ' -f1)" = "$WHEEL_SHA" ]; then
  log "vllm wheel present: $STAGE/download/$WHEEL"
else
  log "downloading vllm==0.24.0 ($WHEEL, 279 MB)"
  $PY -m pip download "vllm==0.24.0" --no-deps --only-binary=:all: --python-version 3.12 \
      --platform manylinux_2_28_x86_64 -d "$STAGE/download" --progress-bar off
  got=$(sha256sum "$STAGE/download/$WHEEL" | cut -d' ' -f1)
  [ "$got" = "$WHEEL_SHA" ] || { echo "[stage] $WHEEL sha256 $got, expected $WHEEL_SHA" >&2; exit 3; }
fi
SECONDS_OF[download_vllm]=$(( $(date +%s) - t0 ))

# 2. The small wheels for python 3.12 (binary only, no dependency resolution: the list is complete).
t0=$(date +%s)
PLATFORMS=()
for minor in $(seq 35 -1 5); do PLATFORMS+=(--platform "manylinux_2_${minor}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
mapfile -t WANT < <($STAGE_PY wheels)
if $PY -c "import sys; sys.path.insert(0, 'tools'); import gpu_stage; gpu_stage.wheel_entries('$STAGE/wheels')" 2>/dev/null; then
  log "${#WANT[@]} small wheels present in $STAGE/wheels"
else
  log "downloading ${#WANT[@]} small wheels (cp312)"
  $PY -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
      --abi abi3 --abi none "${PLATFORMS[@]}" -d "$STAGE/wheels" --progress-bar off "${WANT[@]}" \
      2>&1 | grep -E "^(Saved|Collecting|ERROR|File was already)" || true
fi
# Only the pinned set travels: drop wheels of earlier pins.
$PY - "$STAGE/wheels" <<'EOF'
import os, sys
sys.path.insert(0, "tools")
import gpu_stage
d = sys.argv[1]
keep = {e["file"] for e in gpu_stage.wheel_entries(d)}
for f in os.listdir(d):
    if f.endswith(".whl") and f not in keep:
        os.remove(os.path.join(d, f))
        print(f"[stage] removed {f} (not pinned)")
EOF
SECONDS_OF[download_wheels]=$(( $(date +%s) - t0 ))

# 3. The pruned tree and stage_info.json (stamp: wheel sha + prune list + wheel pins).
t0=$(date +%s)
STAMP=$( { echo "$WHEEL_SHA"; $STAGE_PY prune-list; $STAGE_PY wheels; } | sha256sum | cut -d' ' -f1)
if [ -f "$STAGE/tree/.stamp" ] && [ "$(cat "$STAGE/tree/.stamp")" = "$STAMP" ]; then
  log "pruned tree up to date"
else
  log "unpacking the vllm wheel without the pruned files"
  rm -rf "$STAGE/tree" && mkdir -p "$STAGE/tree/wheels"
  cp -l "$STAGE/wheels"/*.whl "$STAGE/tree/wheels/" 2>/dev/null || cp "$STAGE/wheels"/*.whl "$STAGE/tree/wheels/"
  $PY - "$STAGE/download/$WHEEL" "$STAGE/tree" <<'EOF'
import sys, time
sys.path.insert(0, "tools")
import gpu_stage
wheel, tree = sys.argv[1], sys.argv[2]
info = gpu_stage.extract_pruned(wheel, f"{tree}/site")
info = {"vllm": {"version": gpu_stage.VLLM_VERSION, "wheel": gpu_stage.VLLM_WHEEL,
                 "wheel_sha256": gpu_stage.VLLM_WHEEL_SHA256, **info},
        "wheels": gpu_stage.wheel_entries(f"{tree}/wheels"), "image_has": list(gpu_stage.IMAGE_HAS),
        "needs_glibc": gpu_stage.needs_glibc(f"{tree}/wheels", gpu_stage.VLLM_WHEEL),
        "staged_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
gpu_stage.write_json(f"{tree}/stage_info.json", info)
mb = lambda b: f"{b / 1e6:.1f} MB"
print(f"[stage] vllm kept {mb(info['vllm']['kept_bytes'])}; pruned " +
      ", ".join(f"{p['path']} {mb(p['bytes'])}" for p in info["vllm"]["pruned"]))
print(f"[stage] {len(info['wheels'])} wheels, {mb(sum(w['bytes'] for w in info['wheels']))}; "
      f"the GPU machine needs glibc >= {info['needs_glibc']}")
EOF
  echo "$STAMP" > "$STAGE/tree/.stamp"
fi
SECONDS_OF[prune]=$(( $(date +%s) - t0 ))

# 4. One deterministic tar.xz, split into parts + manifest (stamp: the tree's stamp and the xz level).
t0=$(date +%s)
ARCHIVE=$($PY -c "import sys; sys.path.insert(0, 'tools'); import gpu_stage; print(gpu_stage.ARCHIVE)")
PSTAMP="$STAMP-xz$XZ_LEVEL"
if [ -f "$STAGE/parts/.stamp" ] && [ "$(cat "$STAGE/parts/.stamp")" = "$PSTAMP" ] && [ -f "$STAGE/parts/manifest.json" ]; then
  log "archive parts up to date"
else
  log "packing $ARCHIVE (xz -$XZ_LEVEL, 2 threads; minutes on 2 cores)"
  tar -C "$STAGE/tree" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - site wheels stage_info.json \
    | xz -T2 "-$XZ_LEVEL" > "$STAGE/$ARCHIVE.tmp"
  mv "$STAGE/$ARCHIVE.tmp" "$STAGE/$ARCHIVE"
  cp "$STAGE/tree/stage_info.json" "$STAGE/parts/stage_info.json"
  $STAGE_PY split "$STAGE/$ARCHIVE" "$STAGE/parts"
  rm -f "$STAGE/parts/stage_info.json"
  echo "$PSTAMP" > "$STAGE/parts/.stamp"
fi
SECONDS_OF[pack]=$(( $(date +%s) - t0 ))

# 5. The trained testbed files the GPU run expands (medium when built, else tiny): target + EAGLE-3 head,
#    weights in bfloat16 (what the GPU run serves anyway; half the bytes, so they ride with the last part).
t0=$(date +%s)
$PY - "$STAGE/testbed" <<'EOF'
import json, os, shutil, sys
import torch
from safetensors.torch import load_file, save_file
from verl_specrollout.testing.testbed import build_testbed, is_built
out = sys.argv[1]
size = "medium" if is_built("medium") else "tiny"
tb = build_testbed(size)  # cached: builds only when not there yet (tiny: minutes)
for name in os.listdir(out) if os.path.isdir(out) else []:
    if name != size:
        shutil.rmtree(os.path.join(out, name))
for part, src in (("target", tb.target_dir), ("eagle3", tb.eagle3_dir)):
    dst = os.path.join(out, size, part)
    if os.path.isfile(os.path.join(dst, "READY")):
        continue
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    for f in os.listdir(src):
        if f.endswith(".safetensors"):
            sd = load_file(os.path.join(src, f))
            save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()},
                      os.path.join(dst, f), metadata={"format": "pt"})
    cfg = os.path.join(dst, "config.json")
    with open(cfg) as fh:
        c = json.load(fh)
    c.update({k: "bfloat16" for k in ("torch_dtype", "dtype") if k in c})
    with open(cfg, "w") as fh:
        json.dump(c, fh, indent=2)
    with open(os.path.join(dst, "READY"), "w") as fh:
        fh.write("bfloat16 copy of " + src + "\n")
print(f"[stage] testbed {size} -> {out}/{size} (bfloat16)")
EOF
SECONDS_OF[testbed]=$(( $(date +%s) - t0 ))

# 6. Optional: import vLLM from the staged tree with nothing but an image's packages (tools/gpu_stage_probe.py).
if [ "$CHECK" = 1 ]; then
  t0=$(date +%s)
  $PY tools/gpu_stage_probe.py "$STAGE/tree/site"
  SECONDS_OF[check]=$(( $(date +%s) - t0 ))
fi

# Summary and the device-tool call plan.
SECS=""
for k in "${!SECONDS_OF[@]}"; do SECS="$SECS $k=${SECONDS_OF[$k]}"; done
$PY - "$STAGE" "$(( $(date +%s) - t_all ))" "$SECS" <<'EOF'
import json, os, subprocess, sys
sys.path.insert(0, "tools")
import gpu_stage
stage, total, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3]
m = gpu_stage.read_manifest(f"{stage}/parts/manifest.json")
tb = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(f"{stage}/testbed") for f in fs)
files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], capture_output=True,
                       check=True).stdout.decode().split("\0")
tree = sum(os.path.getsize(f) for f in files if f and os.path.isfile(f))
calls = gpu_stage.call_plan(m, tb, tree)
names = {"testbed": f"{stage}/testbed"}
for c in calls:
    c["carry"] = [names.get(x, f"{stage}/parts/{x}") for x in c["carry"]] + [f"{stage}/parts/manifest.json"]
gpu_stage.write_json(f"{stage}/calls.json", {"calls": calls, "tree_bytes": tree, "testbed_bytes": tb})
mb = lambda b: f"{b / 2**20:.1f} MiB"
print(f"[stage] archive {m['archive']}: {mb(m['bytes'])} in {len(m['parts'])} parts "
      f"({', '.join(mb(p['bytes']) for p in m['parts'])}); testbed {mb(tb)}; working tree {mb(tree)}")
for i, c in enumerate(calls, 1):
    print(f"[stage] call {i}: carry {c['carry']} ({mb(c['bytes'] + tree)} with the tree)"
          + ("; then runs tools/gpu_bringup.sh" if c["run"] else ""))
print(f"[stage] seconds:{secs}; total {total}")
EOF
