"""Shared pieces of the benchmarks: testbed prompts, engines, timing, JSON + plot output.

Policies are compared inside ONE speculative engine whose batch-size -> K table is
rewritten live between interleaved repeats (separate engine instances differ by 10-30 %
on this machine); "plain" is a second engine without speculation, interleaved too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from typing import Optional


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


def add_model_args(ap, dtype_default: str = "float32") -> None:
    """--target / --draft / --prompts-file: measure your own pair; default: the project testbed."""
    ap.add_argument("--target", default=None, help="target model dir (HF format); default: the testbed's")
    ap.add_argument("--draft", default=None, help="draft dir for --method (EAGLE-3 head or draft LM)")
    ap.add_argument("--dtype", default=dtype_default, choices=["float32", "bfloat16"],
                    help="engine dtype; use bfloat16 on the regime testbed (docs/benchmarks.md: float32 verification "
                         "is not memory-bound on this CPU)")
    ap.add_argument("--prompts-file", default=None,
                    help="prompts, one per line (plain text, or JSONL with a 'prompt' string or chat 'messages')")
    ap.add_argument("--draft-sampling", default="auto", choices=["auto", "greedy", "probabilistic"],
                    help="specrollout.draft_sampling of the speculative engine")


def model_pair(args) -> ModelPair:
    if args.target:
        return ModelPair(args.target, {base_method(args.method): args.draft}, args.prompts_file)
    from verl_specrollout.testing.testbed import build_testbed

    tb = build_testbed(args.size)
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
    """(plain engine, speculative engine, its SpecRolloutScheduler)."""
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
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)
