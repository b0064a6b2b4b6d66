"""A draft reload makes no full-size copies (no vLLM).

* The fingerprint of the target's shared embedding / lm_head reads a strided sample in the
  parameter's own dtype: its peak memory is measured in a fresh process (VmHWM, reset first) and
  bounded, next to the float32 sums it replaced, measured the same way.
* The checkpoint is mapped, not read into process memory: its tensors are views of one mapping of
  the file (shared with every TP rank of the node through the page cache); truncated files and
  non-finite values are refused, the latter in bounded chunks.
* A version already live is not reloaded (only LATEST is read).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from verl_specrollout.vllm_adapter.draft_files import check_finite, map_checkpoint
from verl_specrollout.vllm_adapter.draft_reload import DraftReloader, _fingerprint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_PEAK = textwrap.dedent("""
    import json, re, sys, torch
    from verl_specrollout.vllm_adapter.draft_reload import _fingerprint

    def hwm():
        return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024

    def peak(fn):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set to the current one
        h0 = hwm()
        fn()
        return hwm() - h0

    torch.set_num_threads(1)
    rows, cols = int(sys.argv[1]), int(sys.argv[2])
    m = torch.nn.Module()
    m.embed_tokens = torch.nn.Parameter(torch.empty(rows, cols, dtype=torch.bfloat16).normal_(), requires_grad=False)
    m.lm_head = torch.nn.Parameter(torch.empty(rows, cols, dtype=torch.bfloat16).normal_(), requires_grad=False)
    old = lambda: {n: (float(p.detach().float().sum()), float(p.detach().float().abs().sum()))
                   for n, p in m.named_parameters()}
    small = torch.nn.Module()
    small.lm_head = torch.nn.Parameter(torch.zeros(8, 8), requires_grad=False)
    _fingerprint(small)  # one-time initialisation (numpy, index kernels) outside the measurement
    print(json.dumps({"param_bytes": rows * cols * 2, "new": peak(lambda: _fingerprint(m)), "old": peak(old)}))
""")


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _can_reset_peak(), reason="needs Linux /proc/self/clear_refs to reset the peak RSS")
def test_fingerprint_peak_memory_is_bounded():
    rows, cols = 8192, 4096  # 64 MiB per bf16 matrix (a 7B target's are 1.09 GB: 152064 x 3584)
    out = subprocess.run([sys.executable, "-c", _PEAK, str(rows), str(cols)], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    # The float32 sums: two float32 copies of a matrix alive at once (4x its bf16 bytes).
    assert m["old"] > 3 * m["param_bytes"], m
    # The sample: a few KB (allowing for allocator and page noise), whatever the matrix size.
    assert m["new"] < 4 << 20, m


def test_fingerprint_sees_a_write_and_a_swap_and_nothing_else():
    torch.manual_seed(0)
    m = torch.nn.Module()
    m.embed_tokens = torch.nn.Parameter(torch.randn(1000, 64, dtype=torch.bfloat16), requires_grad=False)
    m.lm_head = torch.nn.Parameter(torch.randn(1000, 64), requires_grad=False)
    m.other = torch.nn.Parameter(torch.randn(4))
    fp = _fingerprint(m)
    assert set(fp) == {"embed_tokens", "lm_head"} and _fingerprint(m) == fp
    m.other.data.add_(1)
    assert _fingerprint(m) == fp
    with torch.no_grad():
        m.lm_head.copy_(torch.randn(1000, 64))  # a load that wrote the whole shared matrix
    assert _fingerprint(m) != fp
    fp = _fingerprint(m)
    m.embed_tokens = torch.nn.Parameter(m.embed_tokens.detach().clone(), requires_grad=False)  # same values, new tensor
    assert _fingerprint(m) != fp


def _write(tmp_path, tensors):
    d = tmp_path / "v"
    d.mkdir(exist_ok=True)
    save_file(tensors, str(d / "model.safetensors"))
    return str(d)


def test_mapped_checkpoint_is_the_file_without_a_copy(tmp_path):
    tensors = {"a": torch.randn(64, 32).to(torch.bfloat16), "d2t": torch.arange(7, dtype=torch.int64),
               "b": torch.randn(5), "empty": torch.zeros(0, 3)}
    path = _write(tmp_path, tensors)
    sd = map_checkpoint(path)
    ref = load_file(os.path.join(path, "model.safetensors"))
    assert set(sd) == set(ref) and all(torch.equal(sd[k], ref[k]) and sd[k].dtype == ref[k].dtype for k in ref)
    # Views of one mapping: their addresses are the file's byte offsets apart.
    with open(os.path.join(path, "model.safetensors"), "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    base = sd["a"].data_ptr() - header["a"]["data_offsets"][0]
    assert all(sd[k].data_ptr() - base == header[k]["data_offsets"][0] for k in ("a", "b", "d2t"))


def test_truncated_and_non_finite_checkpoints_are_refused(tmp_path):
    path = _write(tmp_path, {"a": torch.randn(256, 256)})
    f = os.path.join(path, "model.safetensors")
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) - 1024)
    with pytest.raises(ValueError, match="runs past the end"):
        map_checkpoint(path)
    bad = torch.randn(1000)
    bad[777] = float("nan")
    path = _write(tmp_path, {"ok": torch.randn(10), "bad": bad})
    with pytest.raises(ValueError, match="non-finite values in bad"):
        check_finite(map_checkpoint(path), chunk=100)  # the NaN sits in the eighth chunk
    check_finite(map_checkpoint(_write(tmp_path, {"ok": torch.randn(1000)})), chunk=100)


def test_a_live_version_is_not_reloaded(tmp_path):
    calls = []
    os.makedirs(tmp_path / "v000003")
    (tmp_path / "LATEST").write_text("v000003\n")
    rel = DraftReloader(lambda method, args: calls.append(args) or [{"ok": True}], str(tmp_path), initial_version=0)
    assert rel.maybe_reload() == 3 and len(calls) == 1
    for _ in range(3):
        assert rel.maybe_reload() == 3
    assert len(calls) == 1
