"""Best-of-N group drafting (EAGLE-3 or a draft copied from the request's GRPO group) vs EAGLE-3
alone, vLLM's ngram and SuffixDecoding, on GRPO-shaped rollouts over two epochs.

    SPECROLLOUT_PLATFORM=cpu python -m benchmarks.group_draft [--testbed tiny] [--out results/group_draft.json]
    python -m benchmarks.group_draft --target DIR --draft EAGLE3_DIR [--prompts-file p.jsonl]

Per method, ONE engine runs, in order (the group index must see epoch 1 to draft from it in epoch 2):

1. ``epoch1``: P prompts x G samples, one request per sample (what veRL sends vLLM), T=1, natural
   (EOS) lengths capped at --max-tokens, all submitted at once.
2. the policy moves: on the testbed, --drift-steps supervised steps of the target on the shifted task
   (testing/testbed/drift.py, computed once, the same for every method), synced into the running
   engine in place as veRL's weight sync does. With --target or --drift-steps 0 the target stays
   unchanged, and the JSON says so (``drift``: null): epoch 2 then flatters history drafts.
3. ``epoch2``: the same prompts again: earlier responses are now history drafts.
4. ``distinct``: P*G fresh prompts, G=1: siblings share nothing and there is no history.

Methods (--methods): ``eagle3`` (EAGLE-3 alone), ``ngram`` (vLLM's prompt lookup), ``group`` (group
suffix drafts only, on vLLM's ngram path), ``eagle3+group`` (Best-of-N per request and step), and
``suffix`` (vLLM's SuffixDecoding; needs the ``arctic_inference`` package, skipped with the reason
when it does not import). arctic-inference 0.3.0 is an sdist only; it adds no dependency, but it
registers a vLLM plugin, so keep it out of the shared .venv: on this machine its CMake build needs
the Python headers named, then install it aside and put it on PYTHONPATH for this benchmark:
``CMAKE_ARGS="-DPython_EXECUTABLE=$PWD/.venv/bin/python -DPython_INCLUDE_DIR=<python include dir>"
.venv/bin/pip wheel --no-deps arctic-inference -w W && .venv/bin/pip install --no-deps --target SITE
W/arctic_inference-*.whl``, then ``PYTHONPATH=SITE python -m benchmarks.group_draft ...``. Every method runs at a static K = --max-k by default (--planner adaptive lets
the planner choose) with synchronous scheduling (--async-scheduling as-deployed keeps each method's
default: on GPUs vLLM schedules EAGLE-3 alone asynchronously, which group drafting gives up).

Reported per method and workload: tokens/s, mean acceptance length (vLLM's counter, 1 + accepted /
drafts; group drafts are ragged, so also draft and accepted tokens), the group drafter's per-source
counts, and ratios vs eagle3 alone. Each method has its own engine (this machine: 10-30 % between
engine instances, benchmarks/common.py), so tokens/s ratios carry that noise; acceptance does not.
JSON (with provenance) and a PNG of both ratios per workload. Flags: benchmarks/common.py; the default
testbed is tiny in float32, the setting of the results in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time

from benchmarks.common import (ModelPair, add_common_args, engine_settings, load_prompts, median, out_path, plot_path,
                               provenance, write_json)
from verl_specrollout.progress import Progress

METHODS = ("eagle3", "ngram", "group", "eagle3+group", "suffix")
WORKLOADS = ("epoch1", "epoch2", "distinct")
BASELINE = "eagle3"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, "group_draft", testbed="tiny", dtype="float32", max_k=4, max_tokens=256, repeats=1)
    ap.add_argument("--replot", default=None, help="only draw the PNG (--plot PATH, else next to this JSON) from a saved JSON")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--prompts", type=int, default=16, help="prompts per epoch (P)")
    ap.add_argument("--group", type=int, default=8, help="samples per prompt (G)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--planner", choices=("static", "adaptive"), default="static",
                    help="static: K = --max-k throughout; adaptive: the planner picks K up to --max-k")
    ap.add_argument("--async-scheduling", choices=("off", "as-deployed"), default="off")
    ap.add_argument("--drift-steps", type=int, default=8, help="target SFT steps between the epochs (testbed)")
    ap.add_argument("--drift-lr", type=float, default=1e-3)
    ap.add_argument("--drift-batch", type=int, default=16)
    return ap.parse_args(argv)


# ----------------------------------------------------------------------------- inputs
def model_pair(args) -> ModelPair:
    if args.target:
        return ModelPair(args.target, {"eagle3": args.draft}, args.prompts_file)
    from verl_specrollout.testing.testbed import build_testbed

    tb = build_testbed(args.testbed)
    return ModelPair(tb.target_dir, {"eagle3": tb.eagle3_dir}, args.prompts_file, tb)


def workloads(pair: ModelPair, args) -> dict:
    """workload -> list of prompts, one entry per request (a GRPO group is G equal prompts in a row)."""
    grpo = load_prompts(pair, args.prompts, seed=4242)
    if pair.prompts_file:  # the file's prompts after the GRPO ones, cycled if it has too few
        distinct = load_prompts(pair, args.prompts * (1 + args.group))[args.prompts:]
    else:
        distinct = load_prompts(pair, args.prompts * args.group, seed=5353)
    reqs = [p for p in grpo for _ in range(args.group)]
    warmup = load_prompts(pair, 2, seed=9191) if not pair.prompts_file else distinct[-2:]
    return {"epoch1": reqs, "epoch2": reqs, "distinct": distinct, "warmup": warmup}


def drift_target(pair: ModelPair, args, out_dir: str):
    """The moved policy: --drift-steps SFT steps of the testbed target on the shifted task, saved.
    None (no drift) with --target or --drift-steps 0."""
    if pair.testbed is None or args.drift_steps <= 0:
        return None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verl_specrollout.testing.testbed.build import encode_examples, make_batch
    from verl_specrollout.testing.testbed.drift import make_shifted_examples

    tok = AutoTokenizer.from_pretrained(pair.testbed.tokenizer_dir)
    policy = AutoModelForCausalLM.from_pretrained(pair.target_dir).float().train()
    opt = torch.optim.AdamW(policy.parameters(), lr=args.drift_lr, betas=(0.9, 0.98))
    bs = args.drift_batch
    enc = encode_examples(tok, make_shifted_examples(args.drift_steps * bs, seed=100, style="steps"))
    torch.manual_seed(0)
    loss = None
    for i in range(args.drift_steps):
        ids, am, resp = make_batch(enc, list(range(i * bs, (i + 1) * bs)), tok.pad_token_id)
        keep = torch.zeros_like(am, dtype=torch.bool)
        keep[:, 1:] = resp[:, :-1] > 0  # loss on response tokens only
        labels = ids.masked_fill(am == 0, -100).masked_fill(~keep, -100)
        loss = policy(input_ids=ids, attention_mask=am, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
    policy.save_pretrained(out_dir, safe_serialization=True)
    return {"steps": args.drift_steps, "lr": args.drift_lr, "batch": bs, "style": "steps",
            "final_sft_loss": round(float(loss.detach()), 4), "dir": out_dir}


# ----------------------------------------------------------------------------- engines
def _sync_target(self, target_dir):
    """Inside the vLLM worker: load the moved target's weights in place (veRL's weight sync)."""
    import torch
    from safetensors.torch import load_file

    sd = load_file(os.path.join(target_dir, "model.safetensors"))
    with torch.no_grad():
        self.model_runner.get_model().load_weights(iter(sd.items()))
    return True


def _group_worker_stats(self):
    from verl_specrollout.vllm_adapter import group_proposer

    return group_proposer.worker_stats(self)


def suffix_available():
    """None when vLLM's suffix method can run here, else why not."""
    try:
        import arctic_inference.suffix_decoding  # noqa: F401
    except Exception as exc:  # not installed, or its extension does not load
        return f"arctic_inference not importable ({type(exc).__name__}: {exc})"
    return None


def make_engine(method: str, pair: ModelPair, args, max_bs: int):
    from verl_specrollout.config import SpecRolloutConfig
    from verl_specrollout.vllm_adapter.offline_engine import make_llm

    overrides = dict(max_num_seqs=max_bs, max_num_batched_tokens=max(2048, max_bs * (args.max_k + 1)), dtype=args.dtype,
                     **engine_settings(args))
    if args.async_scheduling == "off":
        overrides["async_scheduling"] = False
    if method == "suffix":  # not a specrollout method: vLLM's own speculative_config, vLLM's scheduler
        return make_llm(pair.target_dir, None, speculative_config={"method": "suffix", "num_speculative_tokens": args.max_k},
                        **overrides)
    cfg = {"enable": True, "method": method, "max_k": args.max_k, "draft_sampling": args.draft_sampling,
           "planner": {"mode": args.planner, "max_batch": max_bs}}
    if method.startswith("eagle3"):
        cfg["draft_path"] = pair.draft_for("eagle3")
    return make_llm(pair.target_dir, SpecRolloutConfig.from_dict(cfg), **overrides)


def group_stats(llm) -> dict:
    """The group drafter's cumulative per-source counts ({} for other methods or before it exists)."""
    try:
        rows = [r for r in llm.collective_rpc(_group_worker_stats) if r]
    except Exception:
        return {}
    out: dict = {}
    for r in rows:
        for src, c in r.get("sources", {}).items():
            acc = out.setdefault(src, {"proposed": 0, "accepted": 0, "chosen": 0})
            for key in acc:
                acc[key] += int(c.get(key, 0))
    return out


def _delta(after: dict, before: dict) -> dict:
    return {s: {k: v - before.get(s, {}).get(k, 0) for k, v in c.items()} for s, c in after.items()}


# ----------------------------------------------------------------------------- measurement
def run_workload(llm, prompts, args) -> dict:
    from vllm import SamplingParams

    from verl_specrollout.vllm_adapter.spec_counters import read_counters

    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens)
    c0, g0 = read_counters(llm), group_stats(llm)
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    sec = time.perf_counter() - t0
    d, g1 = read_counters(llm) - c0, group_stats(llm)
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    return {"seconds": round(sec, 3), "tokens": tokens, "tokens_per_s": round(tokens / sec, 2),
            "mean_response_tokens": round(tokens / max(1, len(outs)), 1),
            "mean_acceptance_length": round(d.mean_acceptance_length, 3), "num_drafts": d.num_drafts,
            "draft_tokens": d.num_draft_tokens, "accepted_tokens": d.num_accepted_tokens,
            "group_sources": _delta(g1, g0)}


def run_method(method: str, pair: ModelPair, loads: dict, drift, args, max_bs: int, progress=None) -> dict:
    llm = make_engine(method, pair, args, max_bs)
    try:
        # compile paths at batch sizes like the workload's; prompts of no measured group
        from vllm import SamplingParams

        llm.generate([p for p in loads["warmup"] for _ in range(args.group)],
                     SamplingParams(temperature=args.temperature, max_tokens=min(32, args.max_tokens)),
                     use_tqdm=False)
        out = {}
        for name in WORKLOADS:
            if name == "epoch2" and drift is not None:
                llm.collective_rpc(_sync_target, args=(drift["dir"],))
            out[name] = run_workload(llm, loads[name], args)
            r = out[name]
            print(f"  {method:13s} {name:9s} {r['tokens_per_s']:8.1f} tok/s  acceptance length "
                  f"{r['mean_acceptance_length']:.2f}  ({r['tokens']} tokens, {r['seconds']:.1f}s)"
                  + (f"  sources {r['group_sources']}" if r["group_sources"] else ""), flush=True)
            if progress is not None:
                progress.update(note=f"{method} {name}")
        return out
    finally:
        del llm
        gc.collect()


def summarise(runs: dict) -> list:
    """Median over repeats per (method, workload)."""
    rows = []
    for method, reps in runs.items():
        for name in WORKLOADS:
            rs = [r[name] for r in reps]
            row = {"method": method, "workload": name,
                   "tokens_per_s": round(median([r["tokens_per_s"] for r in rs]), 2),
                   "mean_acceptance_length": round(median([r["mean_acceptance_length"] for r in rs]), 3),
                   "repeats": rs}
            rows.append(row)
    return rows


def ratios_of(rows: list) -> dict:
    by = {(r["method"], r["workload"]): r for r in rows}
    out = {}
    for (method, name), r in by.items():
        base = by.get((BASELINE, name))
        if base is None or method == BASELINE:
            continue
        out.setdefault(name, {})[method] = {
            "tokens_per_s": round(r["tokens_per_s"] / base["tokens_per_s"], 3) if base["tokens_per_s"] else None,
            "acceptance_length": (round(r["mean_acceptance_length"] / base["mean_acceptance_length"], 3)
                                  if base["mean_acceptance_length"] else None)}
    return out


def plot(rows: list, path: str, title: str = "") -> None:
    """Tokens/s and acceptance length of each method over EAGLE-3 alone's, grouped by workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(r["method"], r["workload"]): r for r in rows}
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != BASELINE]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(methods))
    for ax, key, label in ((axes[0], "tokens_per_s", "tokens/s over EAGLE-3 alone (one engine per method)"),
                           (axes[1], "mean_acceptance_length", "acceptance length over EAGLE-3 alone")):
        for i, m in enumerate(methods):
            ys = []
            for w in WORKLOADS:
                base, r = by.get((BASELINE, w)), by.get((m, w))
                ys.append(r[key] / base[key] if r and base and base[key] else 0)
            ax.bar([j + i * width for j in range(len(WORKLOADS))], ys, width, label=m)
        ax.axhline(1.0, color="k", lw=1, label=BASELINE)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(WORKLOADS))], list(WORKLOADS))
        ax.set_ylabel(label, fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, ncol=len(methods) + 1, loc="upper center", frameon=False)
    if title:
        fig.suptitle(title, fontsize=9, y=0.02)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        import json

        with open(args.replot) as f:
            saved = json.load(f)
        png = args.plot if isinstance(args.plot, str) else os.path.splitext(args.replot)[0] + ".png"
        plot(saved["results"], png)
        print(f"[group_draft] wrote {png}", flush=True)
        return saved.get("ratios_vs_eagle3")
    out = out_path(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"--methods: unknown {bad}; choose from {METHODS}")
    skipped = {}
    if "suffix" in methods:
        why = suffix_available()
        if why:
            skipped["suffix"] = why
            methods.remove("suffix")
            print(f"[group_draft] suffix skipped: {why}", flush=True)
    pair = model_pair(args)
    if args.target and not args.draft and any(m.startswith("eagle3") for m in methods):
        raise SystemExit("--target with eagle3 methods needs --draft (an EAGLE-3 head)")
    loads = workloads(pair, args)
    max_bs = max(len(loads[w]) for w in WORKLOADS)
    if pair.testbed is not None and args.drift_steps > 0:
        from verl_specrollout import cpu_platform_requested
        from verl_specrollout.vllm_adapter.engine_patches import _vllm_runs_on_cpu

        if cpu_platform_requested() or _vllm_runs_on_cpu():  # plain linear weights: the target syncs in place
            from verl_specrollout.cpu_platform import plain_linear_weights

            plain_linear_weights.install()
    work = tempfile.mkdtemp(prefix="group_draft-")
    drift = drift_target(pair, args, os.path.join(work, "target_moved"))
    print(f"[group_draft] drift: {drift if drift else 'none (epoch 2 runs the unchanged target)'}", flush=True)
    t_start = time.perf_counter()
    runs = {m: [] for m in methods}
    progress = Progress(args.repeats * len(methods) * len(WORKLOADS), "group_draft", unit="workload")
    for rep in range(args.repeats):
        for m in methods:
            print(f"[group_draft] rep {rep} method {m}", flush=True)
            runs[m].append(run_method(m, pair, loads, drift, args, max_bs, progress))
    rows = summarise(runs)
    ratios = ratios_of(rows)
    print(f"\n{'method':13s} " + " ".join(f"{w + ' tok/s':>15s} {'acc.len':>7s}" for w in WORKLOADS))
    for m in methods:
        cells = []
        for w in WORKLOADS:
            r = next(x for x in rows if x["method"] == m and x["workload"] == w)
            rt = ratios.get(w, {}).get(m, {}).get("tokens_per_s")
            cells.append(f"{r['tokens_per_s']:8.1f}" + (f" ({rt:.2f}x)" if rt else " " * 8)
                         + f" {r['mean_acceptance_length']:7.2f}")
        print(f"{m:13s} " + " ".join(cells))
    write_json(out, {"benchmark": "group_draft", "provenance": provenance(args, pair),
                     "testbed": None if args.target else args.testbed,
                     "target": pair.target_dir, "methods": methods, "skipped": skipped,
                     "prompts": args.prompts, "group": args.group, "max_tokens": args.max_tokens,
                     "temperature": args.temperature, "k": args.max_k, "planner": args.planner,
                     "async_scheduling": args.async_scheduling, "repeats": args.repeats,
                     "drift": {k: v for k, v in drift.items() if k != "dir"} if drift else None,
                     "seconds_total": round(time.perf_counter() - t_start, 1),
                     "ratios_vs_eagle3": ratios, "results": rows})
    png = plot_path(args)
    if png:
        plot(rows, png)
    print(f"[group_draft] wrote {out}" + (f" and {png}" if png else ""), flush=True)
    return ratios


if __name__ == "__main__":
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    main()
