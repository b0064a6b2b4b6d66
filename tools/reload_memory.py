#!/usr/bin/env python3
"""Peak memory of one live draft reload at 7B shapes, this tree against an older revision.

    python tools/reload_memory.py --before-rev 55aa8bd    # before the mapped read / sampled fingerprint
    python tools/reload_memory.py                         # before = HEAD's draft_reload.py
    python tools/reload_memory.py --scale 0.125 --json    # smaller shapes (hidden and vocab / 8)

Needs Linux (/proc/self/status, clear_refs), about 10 GB of free memory for the old variant at 7B
shapes (3 GB for the new) and 1 GB of disk under --workdir; takes 3-4 minutes on 2 CPU cores.

Shapes: a Qwen2.5-7B target's shared matrices (embed_tokens and lm_head, 152064 x 3584, bf16) and
a one-layer EAGLE-3 head (hidden 3584, intermediate 18944, 28 heads, 4 KV heads of 128, own lm_head
over a 32000-token draft vocabulary, d2t, fc over three aux layers, RoPE cache of 32768 positions):
403 M parameters, an 805 MB bf16 checkpoint written once under --workdir. Everything lives in CPU
memory; a stand-in worker exposes vLLM's names (model_runner.get_model / get_draft_model), and the
draft's load_weights copies each checkpoint tensor into its parameter as vLLM's loaders do.

Each variant runs in its own process (the draft_reload.py of --before-rev, loaded from git, then
this tree's) and reports, from a reset peak (/proc/self/clear_refs):

* ``reload``: the whole reload_draft_in_worker call: peak resident set above the set before it
  (VmHWM: anonymous + file-backed pages) and the sampled peak of anonymous memory alone (RssAnon,
  every millisecond): mapped checkpoint pages are the node's page cache, shared by its TP ranks;
* ``fingerprint``: the target fingerprint alone (taken twice per reload);
* ``read``: reading the checkpoint alone (per TP rank, per reload).

On a GPU the fingerprint's temporaries and the old rollback copy of the head are device memory;
the checkpoint read and the new rollback copy are host memory.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = "verl_specrollout/vllm_adapter/draft_reload.py"

# Qwen2.5-7B and a one-layer EAGLE-3 head for it.
HIDDEN, VOCAB, INTER, HEADS, KV_HEADS, HEAD_DIM = 3584, 152064, 18944, 28, 4, 128
DRAFT_VOCAB, MAX_POS, AUX = 32000, 32768, 3


def shapes(scale: float) -> dict:
    h = max(64, int(HIDDEN * scale) // HEAD_DIM * HEAD_DIM) if scale < 1 else HIDDEN
    heads = h // HEAD_DIM
    kv = max(1, KV_HEADS * heads // HEADS)
    inter, vocab, dvocab = int(INTER * scale), int(VOCAB * scale), int(DRAFT_VOCAB * scale)
    return {"hidden": h, "vocab": vocab, "draft_vocab": dvocab, "max_pos": MAX_POS, "checkpoint": {
        "midlayer.self_attn.q_proj.weight": (heads * HEAD_DIM, 2 * h),
        "midlayer.self_attn.k_proj.weight": (kv * HEAD_DIM, 2 * h),
        "midlayer.self_attn.v_proj.weight": (kv * HEAD_DIM, 2 * h),
        "midlayer.self_attn.o_proj.weight": (h, heads * HEAD_DIM),
        "midlayer.mlp.gate_proj.weight": (inter, h),
        "midlayer.mlp.up_proj.weight": (inter, h),
        "midlayer.mlp.down_proj.weight": (h, inter),
        "midlayer.input_layernorm.weight": (h,),
        "midlayer.hidden_norm.weight": (h,),
        "midlayer.post_attention_layernorm.weight": (h,),
        "fc.weight": (h, AUX * h),
        "norm.weight": (h,),
        "lm_head.weight": (dvocab, h),
        "d2t": (dvocab,),
    }}


def write_checkpoint(workdir: str, shp: dict) -> str:
    import torch
    from safetensors.torch import save_file

    path = os.path.join(workdir, f"eagle3_h{shp['hidden']}_v{shp['draft_vocab']}")
    if os.path.isfile(os.path.join(path, "model.safetensors")):
        return path
    os.makedirs(path, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    sd = {}
    for name, shape in shp["checkpoint"].items():
        if name == "d2t":
            sd[name] = torch.zeros(shape, dtype=torch.int64)
        else:
            sd[name] = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
    save_file(sd, os.path.join(path, "model.safetensors"))
    return path


# ------------------------------------------------------------------------------------ child

def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) * 1024


class _Peak:
    """Peak VmHWM (reset at start) and sampled peak RssAnon above their values at start."""

    def __enter__(self):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.hwm0, self.anon0 = _status("VmHWM"), _status("RssAnon")
        self.anon_peak, self._stop = self.anon0, False
        self._t = threading.Thread(target=self._sample, daemon=True)
        self._t.start()
        return self

    def _sample(self):
        while not self._stop:
            self.anon_peak = max(self.anon_peak, _status("RssAnon"))
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop = True
        self._t.join()
        self.anon_peak = max(self.anon_peak, _status("RssAnon"))
        self.rss = _status("VmHWM") - self.hwm0
        self.anon = self.anon_peak - self.anon0


def child(variant_path: str, ckpt: str, shp: dict) -> dict:
    import torch
    import torch._dynamo  # noqa: F401  imported in every vLLM worker; the dry run's dispatch mode needs it

    torch.set_num_threads(2)
    spec = importlib.util.spec_from_file_location("draft_reload_variant", variant_path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    h, vocab, dvocab = shp["hidden"], shp["vocab"], shp["draft_vocab"]

    def bf16(*shape):
        return torch.nn.Parameter(torch.empty(shape, dtype=torch.bfloat16).normal_(std=0.02), requires_grad=False)

    target = torch.nn.Module()
    target.model = torch.nn.Module()
    target.model.embed_tokens = bf16(vocab, h)
    target.lm_head = bf16(vocab, h)

    class Draft(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Module()
            self.model.embed_tokens = target.model.embed_tokens  # vLLM shares the target's
            self._names = {}
            for name, shape in shp["checkpoint"].items():
                if name == "d2t":
                    self.draft_id_to_target_id = torch.nn.Parameter(torch.zeros(shape, dtype=torch.long),
                                                                    requires_grad=False)
                    continue
                owner = self
                local = "model." + name if not name.startswith("lm_head") else name
                parts = local.split(".")
                for p in parts[:-1]:
                    if not hasattr(owner, p):
                        owner.add_module(p, torch.nn.Module())
                    owner = getattr(owner, p)
                owner.register_parameter(parts[-1], bf16(*shape))
                self._names[name] = local
            self.model.midlayer.self_attn.add_module("rotary_emb", torch.nn.Module())
            self.model.midlayer.self_attn.rotary_emb.register_buffer(
                "cos_sin_cache", torch.randn(shp["max_pos"], 128).to(torch.bfloat16), persistent=False)

        def load_weights(self, weights):
            params = dict(self.named_parameters())
            for name, t in weights:
                local = "draft_id_to_target_id" if name == "d2t" else self._names[name]
                params[local].data.copy_(t)

    draft = Draft()

    class Runner:
        def get_model(self):
            return target

        def get_draft_model(self):
            return draft

    class Worker:
        model_runner = Runner()

    worker = Worker()
    out = {}
    with _Peak() as p:
        mod._fingerprint(target)
    out["fingerprint"] = {"rss": p.rss, "anon": p.anon}
    with _Peak() as p:
        sd = mod._read_checkpoint(ckpt)
        touched = sum(float(t.reshape(-1)[:: max(1, t.numel() // 64)].float().sum()) for t in sd.values())
    del sd
    out["read"] = {"rss": p.rss, "anon": p.anon, "touched": touched != 0}
    t0 = time.perf_counter()
    with _Peak() as p:
        res = mod.reload_draft_in_worker(worker, ckpt, 1)
    out["reload"] = {"rss": p.rss, "anon": p.anon, "seconds": round(time.perf_counter() - t0, 2),
                     "ok": res["ok"], "error": res["error"]}
    if hasattr(mod, "keep_draft_in_worker"):
        keep = mod.keep_draft_in_worker(worker, ckpt)
        out["kept_on_host"] = {"names": keep["names"], "bytes": keep["kept_bytes"]}
    return out


# ------------------------------------------------------------------------------------ parent

def _variant_file(rev: str, workdir: str) -> str:
    src = subprocess.run(["git", "show", f"{rev}:{MODULE}"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    path = os.path.join(workdir, f"draft_reload_{rev.replace('/', '_')}.py")
    with open(path, "w") as f:
        f.write(src)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before-rev", default="HEAD", help="git revision whose draft_reload.py is 'before'")
    ap.add_argument("--scale", type=float, default=1.0, help="scale hidden / vocab / intermediate (1 = 7B)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "specrollout_reload_memory"))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("MODULE_FILE", "CKPT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    shp = shapes(args.scale)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], shp)))
        return 0
    os.makedirs(args.workdir, exist_ok=True)
    ckpt = write_checkpoint(args.workdir, shp)
    results = {"shapes": {k: v for k, v in shp.items() if k != "checkpoint"},
               "checkpoint_bytes": os.path.getsize(os.path.join(ckpt, "model.safetensors"))}
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for label, path in (("before", _variant_file(args.before_rev, args.workdir)),
                        ("after", os.path.join(REPO, MODULE))):
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "--scale", str(args.scale),
                            "--child", path, ckpt], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            print(r.stderr[-3000:], file=sys.stderr)
            return 1
        results[label] = json.loads(r.stdout.strip().splitlines()[-1])
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    gb = lambda b: f"{b / 1e9:6.2f} GB"  # noqa: E731
    print(f"shapes {results['shapes']}, checkpoint {gb(results['checkpoint_bytes'])}")
    print(f"{'':12s} {'before rss':>12s} {'before anon':>12s} {'after rss':>12s} {'after anon':>12s}")
    for part in ("fingerprint", "read", "reload"):
        b, a = results["before"][part], results["after"][part]
        print(f"{part:12s} {gb(b['rss']):>12s} {gb(b['anon']):>12s} {gb(a['rss']):>12s} {gb(a['anon']):>12s}")
    print(f"reload seconds: before {results['before']['reload']['seconds']}, after {results['after']['reload']['seconds']}")
    if "kept_on_host" in results["after"]:
        k = results["after"]["kept_on_host"]
        print(f"kept on the host across sleep (after): {k['names']} = {k['bytes'] / 2**20:.2f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
