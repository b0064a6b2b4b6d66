"""GPU bring-up: our plugin inside a real vLLM 0.24.0 engine on one GPU without network.

    python tools/gpu_bringup.py [--out results/gpu_bringup.json] [--budget-s 480]    # on the GPU machine
    python tools/gpu_bringup.py --device cpu --tiny                                   # vLLM-CPU, the tiny testbed

On CUDA it first installs what tools/gpu_stage_vllm.sh staged (reassembles the archive parts and checks
their sha256 against the manifest, unpacks into --site-dir, installs the small wheels the image lacks
with ``pip install --no-index --no-deps --target``, registers our entry points, sets PYTHONPATH and
VLLM_USE_FLASHINFER_SAMPLER=0), checks ``import vllm`` and our ``vllm.general_plugins`` entry point, and
builds the model: a function-preserving expansion (verl_specrollout/testing/testbed/expand.py) of the
trained testbed target and EAGLE-3 head to ``--shape`` (7b: Llama-3-8B's layer shapes at the testbed's
head_dim 64 and vocabulary; regime: the testbed's regime size; tiny: as trained). Then, in one process
(in-process engines, VLLM_ENABLE_V1_MULTIPROCESSING=0, as the benchmarks run them):

  a  startup     per engine: async scheduling, the cudagraph mode vLLM settled on (engine and worker side,
                 after its overrides), the scheduler class, the draft sampling method, the model runner
  b  step_time   median decode step with all B requests running: plain vLLM vs ours at K=0 with the K=0
                 skip on and off, and at every K of --ks, for every B of --batches
  c  grpo        a GRPO-shaped rollout (P prompts x G samples submitted at once, heavy-tailed lengths):
                 plain, every static K, adaptive
  d  sleep       three sleep(level=2) / wake_up cycles: target reloaded from disk, the draft restored by
                 our path (DraftReloader.keep / restore: vllm_adapter/draft_sleep.py); greedy tokens and
                 acceptance after each cycle against before (CUDA only: vLLM-CPU has no sleep mode)
  e  graphs      greedy token equality against plain vLLM: ours with CUDA graphs, and (CUDA) engines
                 started eager, on the V2 model runner (static K: full graphs) and with
                 graph_plan=keep_user_mode, each with its decode step at K = max_k (--variant-batches)
  f  memory      peak GPU memory per engine (torch's peak and the device's used memory), host RSS on CPU

Engines get veRL 0.9.1's vLLM settings (vllm_async_server.py launch_server: cudagraph_mode
FULL_AND_PIECEWISE unless the job names one, chunked prefill, prefix caching, max_num_batched_tokens
8192, enforce_eager false), and ours goes through verl_specrollout/vllm_adapter/engine_kwargs.py with
engine.graph_plan=auto and the model-runner pin of our veRL server, as a veRL job would. Only ours starts
with enable_sleep_mode: vLLM's CuMemAllocator is one pool per process, and a level-2 sleep would discard
the plain engine's weights with ours. On CPU every engine is eager (vLLM-CPU has no CUDA graphs).

Every step runs under --budget-s (checked before each point; past it the remaining points and steps
are recorded as skipped), a failing step is recorded with its error and the next one still runs, and
the JSON is rewritten after every point, so a killed run leaves every finished point on disk.

JSON schema (``schema: "specrollout.gpu_bringup/1"``)::

    {"schema", "device": {"type", "name", "total_memory_gib"}, "python", "torch", "cuda", "vllm",
     "settings": {...the arguments...}, "complete": bool, "stopped_early": str|null, "elapsed_s": float,
     "install": {"status": "ok"|"failed"|"skipped", "reason"|"error", "seconds", "archive_sha256",
                 "wheels_installed": [str], "wheels_present": [str], "image_missing": [str],
                 "plugin_entry_point": bool},
     "model": {"shape", "testbed_dir", "target_dir", "eagle3_dir", "dtype", "target_params", "seconds"},
     "engines": {name: {"kwargs": {...}, "start_s": float, "facts": {...step a...},
                        "memory": {...step f...}}},
     "steps": {"startup"|"step_time"|"grpo"|"sleep"|"graphs"|"memory":
               {"status": "ok"|"failed"|"skipped"|"partial", "reason"|"error": str, "seconds": float, ...}}}

step_time points: {"batch", "variant": "plain"|"k0_skip_on"|"k0_skip_off"|"k<K>", "k", "step_ms" (median
interval between two engine updates with all B requests running), "steps", "wall_s", "tokens",
"acceptance_length"} and "k0_over_plain": [{"batch", "skip_on", "skip_off"}] (step_ms ratios).
grpo results: {"policy", "k", "wall_s", "tokens", "tokens_per_s", "acceptance_length"}.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import resource
import statistics
import sys
import time
import traceback
from typing import Callable, Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import gpu_stage  # noqa: E402  (standard library only: usable before anything is installed)

SCHEMA = "specrollout.gpu_bringup/1"
STEPS = {"a": "startup", "b": "step_time", "c": "grpo", "d": "sleep", "e": "graphs", "f": "memory"}
# Llama-3-8B's layer shapes (hidden 4096, 32 layers, MLP 14336, 8 KV heads) at the testbed's head_dim 64,
# so 64 query heads: 6.8 B parameters in the layers; the vocabulary stays the testbed's (128), so the
# lm_head of a real 128k vocabulary is not in the step cost.
SHAPE_7B = dict(hidden_size=4096, num_attention_heads=64, num_key_value_heads=8, intermediate_size=14336,
                num_hidden_layers=32, new_layers="spread", seed=0)
# veRL 0.9.1's rollout defaults that reach vLLM (trainer/config/rollout/rollout.yaml, vllm_async_server.py).
VERL_ENGINE = dict(enable_chunked_prefill=True, enable_prefix_caching=True, max_num_batched_tokens=8192)
VERL_CUDAGRAPH_MODE = "FULL_AND_PIECEWISE"


def log(msg: str) -> None:
    print(f"[bringup] {msg}", flush=True)


def first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"


# ----------------------------------------------------------------------------------------------- install

def check_imports(record: dict) -> bool:
    """`import vllm` and our vllm.general_plugins entry point, resolved as vLLM resolves it."""
    from importlib import metadata

    import vllm
    from vllm import LLM, SamplingParams  # noqa: F401  (vLLM's lazy names: the whole front-end import chain)

    record["vllm"] = vllm.__version__
    eps = [ep for ep in metadata.entry_points(group="vllm.general_plugins") if ep.name == "specrollout"]
    if not eps:
        raise RuntimeError("no vllm.general_plugins entry point 'specrollout': our plugin would not load in vLLM")
    eps[0].load()
    log(f"vllm {vllm.__version__} from {os.path.dirname(vllm.__file__)}; plugin entry point {eps[0].value}")
    return True


# ------------------------------------------------------------------------------------------------- model

def default_testbed_dir(stage_dir: str) -> Optional[str]:
    """The staged testbed (medium if staged, else tiny), else the local cache's (medium if built, else tiny)."""
    for size in ("medium", "tiny"):
        d = os.path.join(stage_dir, "testbed", size)
        if os.path.isdir(os.path.join(d, "target")):
            return d
    return None


def build_model(args, record: dict) -> tuple:
    """(target_dir, eagle3_dir) at --shape, expanded from --testbed-dir (cached under --work-dir)."""
    t0 = time.monotonic()
    tb = args.testbed_dir
    if tb is None:
        from verl_specrollout.testing.testbed import build_testbed, is_built

        t = build_testbed("medium" if is_built("medium") else "tiny")
        tb = t.root
    src_target, src_head = os.path.join(tb, "target"), os.path.join(tb, "eagle3")
    for d in (src_target, src_head):
        if not os.path.isfile(os.path.join(d, "config.json")):
            raise FileNotFoundError(f"{d}: no config.json (--testbed-dir must hold target/ and eagle3/)")
    record.update(shape=args.shape, testbed_dir=os.path.abspath(tb), dtype=args.dtype)
    if args.shape == "tiny":
        target, head = src_target, src_head
    else:
        target, head = expand_model(args, src_target, src_head)
    with open(os.path.join(target, "config.json")) as f:
        cfg = json.load(f)
    from verl_specrollout.testing.testbed.expand import llama_param_count

    record.update(target_dir=target, eagle3_dir=head, seconds=round(time.monotonic() - t0, 1),
                  target_params=llama_param_count(cfg["vocab_size"], cfg["hidden_size"], cfg["num_attention_heads"],
                                                  cfg["num_key_value_heads"], cfg.get("head_dim") or
                                                  cfg["hidden_size"] // cfg["num_attention_heads"],
                                                  cfg["intermediate_size"], cfg["num_hidden_layers"],
                                                  bool(cfg.get("tie_word_embeddings"))),
                  layers=cfg["num_hidden_layers"], hidden_size=cfg["hidden_size"])
    log(f"model {args.shape}: {record['target_params'] / 1e9:.2f} B params in {target} ({record['seconds']}s)")
    return target, head


def expand_model(args, src_target: str, src_head: str) -> tuple:
    """Expand target and head; the target is written in --dtype (a 7B float32 copy would be 27 GB)."""
    import torch
    from safetensors.torch import save_file

    from verl_specrollout.testing.testbed import build as tb_build
    from verl_specrollout.testing.testbed import expand as ex

    spec = SHAPE_7B if args.shape == "7b" else tb_build.EXPANDED["regime"]["expand"]
    shape = ex.ExpandShape.from_dict(spec)
    key = gpu_stage.sha256_file(os.path.join(src_target, "model.safetensors"))[:12]
    out = os.path.join(args.work_dir, f"model-{args.shape}-{args.dtype}-{key}")
    target, head = os.path.join(out, "target"), os.path.join(out, "eagle3")
    if os.path.isfile(os.path.join(out, "READY")):
        return target, head
    from verl_specrollout.draft.eagle3 import read_weights
    from verl_specrollout.draft.format import find_weight_files

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with open(os.path.join(src_target, "config.json")) as f:
        cfg = json.load(f)
    # expand_checkpoint would write the expansion in the source's float32 (27 GB at 7B): the state is
    # expanded here and written in --dtype instead.
    sd2, cfg2, plan = ex.expand_target_state(read_weights(src_target, find_weight_files(src_target)), cfg, shape)
    dtype = getattr(torch, args.dtype)
    for k in list(sd2):  # one tensor at a time: the float32 copy never exists twice
        sd2[k] = sd2[k].to(dtype).contiguous()
    cfg2["torch_dtype"] = cfg2["dtype"] = args.dtype
    os.makedirs(target, exist_ok=True)
    save_file(sd2, os.path.join(target, ex.WEIGHTS_NAME), metadata={"format": "pt"})
    del sd2
    with open(os.path.join(target, "config.json"), "w") as f:
        json.dump(cfg2, f, indent=2)
    import shutil

    for name in os.listdir(src_target):  # tokenizer, chat template, generation config
        if name not in ("config.json", ex.WEIGHTS_NAME) and os.path.isfile(os.path.join(src_target, name)):
            shutil.copy2(os.path.join(src_target, name), os.path.join(target, name))
    ex.expand_eagle3_checkpoint(src_head, head, src_target, shape, plan)
    open(os.path.join(out, "READY"), "w").write("ok\n")
    return target, head


# ----------------------------------------------------------------------------------------------- engines

def _rpc_runner_facts(self) -> dict:
    """Runs in the worker: what its model runner is and which cudagraph mode it really uses."""
    from verl_specrollout import compat

    runner = getattr(self, compat.VLLM_WORKER_MODEL_RUNNER)
    vcfg = getattr(runner, compat.VLLM_RUNNER_VLLM_CONFIG_ATTR, None) or getattr(self, "vllm_config", None)
    cc = getattr(vcfg, compat.VLLM_ARG_COMPILATION_CONFIG, None)
    mode = getattr(cc, compat.VLLM_CC_CUDAGRAPH_MODE, None)
    try:
        v1 = isinstance(runner, compat.resolve(compat.VLLM_V1_MODEL_RUNNER))
    except Exception:
        v1 = None
    return {"model_runner": f"{type(runner).__module__}.{type(runner).__qualname__}", "v1_runner": v1,
            "worker_cudagraph_mode": getattr(mode, "name", None if mode is None else str(mode)),
            "runner_async_scheduling": getattr(runner, compat.VLLM_RUNNER_ASYNC_SCHED_ATTR, None)}


def _rpc_set_k0_skip(self, flag: bool) -> bool:
    from verl_specrollout import compat
    from verl_specrollout.vllm_adapter import k0_skip

    runner = getattr(self, compat.VLLM_WORKER_MODEL_RUNNER)
    for attr in compat.VLLM_RUNNER_DRAFTER_ATTRS:
        drafter = getattr(runner, attr, None)
        if drafter is not None:
            k0_skip.set_enabled(drafter, flag)
            return True
    return False


def engine_facts(llm) -> dict:
    """Step a: what the engine runs with, after vLLM's own overrides."""
    from verl_specrollout import compat

    vcfg = compat.llm_vllm_config(llm)
    sched = compat.in_process_scheduler(llm)
    cc = getattr(vcfg, compat.VLLM_ARG_COMPILATION_CONFIG)
    spec = getattr(vcfg, compat.VLLM_RUNNER_SPEC_CONFIG_ATTR, None)
    mode = getattr(cc, compat.VLLM_CC_CUDAGRAPH_MODE, None)
    facts = {
        "scheduler_class": f"{type(sched).__module__}.{type(sched).__qualname__}",
        "async_scheduling": bool(getattr(vcfg.scheduler_config, compat.VLLM_SCHED_CONFIG_ASYNC_ATTR, False)),
        "cudagraph_mode": getattr(mode, "name", None if mode is None else str(mode)),
        "max_capture_size": getattr(cc, compat.VLLM_CC_MAX_CAPTURE_SIZE, None),
        "speculative_method": getattr(spec, compat.VLLM_SPEC_METHOD_ATTR, None) if spec else None,
        "num_speculative_tokens": getattr(spec, compat.VLLM_SPEC_NUM_TOKENS_ATTR, None) if spec else None,
        "draft_sample_method": getattr(spec, compat.VLLM_SPEC_DRAFT_SAMPLE_METHOD_ATTR, None) if spec else None,
        "k_table_in_vllm_config": bool(getattr(spec, compat.VLLM_SPEC_DYNAMIC_TABLE_ATTR, None)) if spec else False,
        "k_lookup_installed": compat.get_dynamic_lookup(sched) is not None,
        "env_use_v2_model_runner": os.environ.get(compat.VLLM_ENV_USE_V2_MODEL_RUNNER),
    }
    facts.update(llm.collective_rpc(_rpc_runner_facts)[0])
    return facts


class StepClock:
    """(time, running requests, scheduled K) at every update_from_output of an engine's scheduler: one per
    engine step in synchronous and asynchronous scheduling alike (see vllm_adapter/step_timer.py)."""

    def __init__(self, llm):
        from verl_specrollout import compat

        self.sched = compat.in_process_scheduler(llm)
        self.marks: List[tuple] = []
        original = getattr(self.sched, compat.VLLM_SCHED_UPDATE_FROM_OUTPUT)

        def update_from_output(scheduler_output, model_runner_output):
            out = original(scheduler_output, model_runner_output)
            self.marks.append((time.perf_counter(), len(self.sched.running), compat.scheduled_k(scheduler_output)))
            return out

        setattr(self.sched, compat.VLLM_SCHED_UPDATE_FROM_OUTPUT, update_from_output)  # this instance only

    def take(self) -> List[tuple]:
        got, self.marks = self.marks, []
        return got


def step_ms(marks: List[tuple], batch: int) -> Optional[float]:
    """Median interval between consecutive updates while all `batch` requests ran (prefill steps and the
    tail excluded); None when there are fewer than two such intervals."""
    d = [(b[0] - a[0]) * 1e3 for a, b in zip(marks, marks[1:]) if a[1] >= batch and b[1] >= batch]
    return round(statistics.median(d), 4) if len(d) >= 2 else None


class Engines:
    """The engines of this run, started on first use and closed on request; records kwargs, start time,
    facts and memory per engine into the result."""

    def __init__(self, run: "Run", target: str, head: str):
        self.run, self.target, self.head = run, target, head
        self.live: Dict[str, object] = {}
        self.clocks: Dict[str, StepClock] = {}

    def spec_config(self, **engine):
        from verl_specrollout.config import SpecRolloutConfig

        a = self.run.args
        return SpecRolloutConfig.from_dict({
            "enable": True, "method": "eagle3", "draft_path": self.head, "max_k": max(a.ks),
            "planner": {"mode": engine.pop("mode", "adaptive"), "max_batch": a.max_num_seqs},
            "engine": engine})

    def kwargs(self, name: str) -> tuple:
        """(SpecRolloutConfig or None, vLLM overrides, environment) of each engine kind."""
        a = self.run.args
        kw = dict(max_num_seqs=a.max_num_seqs, max_model_len=a.max_model_len, seed=0, disable_log_stats=False,
                  dtype=a.dtype, **VERL_ENGINE)
        if a.device == "cuda":
            kw.update(enforce_eager=False, compilation_config={"cudagraph_mode": VERL_CUDAGRAPH_MODE},
                      gpu_memory_utilization=a.gpu_memory_utilization,
                      kv_cache_memory_bytes=int(a.kv_cache_gib * 2**30))
        from verl_specrollout import compat
        from verl_specrollout.vllm_adapter.engine_kwargs import pin_model_runner

        if name == "plain":  # the runner vLLM picks itself, as in a veRL job without our plugin
            return None, kw, {compat.VLLM_ENV_USE_V2_MODEL_RUNNER: None}
        env = {compat.VLLM_ENV_USE_V2_MODEL_RUNNER: None}
        pin_model_runner(env)  # what our veRL server does before its engine starts (V1 below vLLM 0.32)
        if a.device == "cuda":
            kw["enable_sleep_mode"] = name == "spec"  # veRL's hybrid engine sleeps; one cumem pool per process
        if name == "spec_eager":
            kw.update(enforce_eager=True)
            kw.pop("compilation_config", None)
        if name == "spec_keep":
            return self.spec_config(graph_plan="keep_user_mode"), kw, env
        if name == "spec_v2":
            # vLLM 0.24's V2 runner keeps full graphs only without a K table: static K = max_k.
            env[compat.VLLM_ENV_USE_V2_MODEL_RUNNER] = "1"
            return self.spec_config(mode="static"), kw, env
        return self.spec_config(), kw, env

    def get(self, name: str):
        if name in self.live:
            return self.live[name]
        from verl_specrollout.vllm_adapter.offline_engine import make_llm

        cfg, kw, env = self.kwargs(name)
        entry = self.run.result["engines"].setdefault(name, {})
        entry["kwargs"] = {k: v for k, v in kw.items()}
        entry["specrollout"] = None if cfg is None else {"method": cfg.method, "max_k": cfg.max_k,
                                                         "mode": cfg.planner.mode, "graph_plan": cfg.engine.graph_plan}
        saved = {k: os.environ.get(k) for k in env}
        set_env(env)
        entry["env"] = env
        mem0 = memory_now(self.run.args.device)
        reset_peak(self.run.args.device)
        t0 = time.monotonic()
        try:
            llm = make_llm(self.target, cfg, **kw)
        finally:
            set_env(saved)
        entry["start_s"] = round(time.monotonic() - t0, 2)
        entry["memory"] = {"at_start": memory_delta(mem0, memory_now(self.run.args.device))}
        self.live[name] = llm
        self.clocks[name] = StepClock(llm)
        log(f"engine {name} started in {entry['start_s']}s")
        self.run.save()
        return llm

    def sched(self, name: str):
        from verl_specrollout import compat

        return compat.in_process_scheduler(self.get(name))

    def note_memory(self, name: str, phase: str) -> None:
        entry = self.run.result["engines"].get(name)
        if entry is not None:
            entry.setdefault("memory", {})[phase] = memory_now(self.run.args.device)

    def close(self, name: str) -> None:
        llm = self.live.pop(name, None)
        if llm is None:
            return
        self.note_memory(name, "before_close")
        self.clocks.pop(name, None)
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception as exc:  # an engine that cannot shut down still goes out of scope
            log(f"engine {name} shutdown: {first_line(exc)}")
        del llm
        gc.collect()
        if self.run.args.device == "cuda":
            import torch

            torch.cuda.empty_cache()

    def close_all(self) -> None:
        for name in list(self.live):
            self.close(name)


def set_env(env: Dict[str, Optional[str]]) -> None:
    """Set (None: unset) variables for the next engine. vLLM caches its environment once an engine core
    starts (vllm.envs.enable_envs_cache, 0.24+), so a second engine in this process would otherwise read the
    first one's VLLM_USE_V2_MODEL_RUNNER; the cache is dropped first (where this vLLM has one)."""
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    from verl_specrollout import compat

    try:
        disable = compat.resolve(compat.VLLM_ENVS_DISABLE_CACHE)
    except Exception:  # no cache in this vLLM: nothing to drop
        return
    disable()


# ------------------------------------------------------------------------------------------------ memory

def memory_now(device: str) -> dict:
    if device == "cuda":
        import torch

        free, total = torch.cuda.mem_get_info()
        return {"device_used_gib": round((total - free) / 2**30, 3),
                "torch_peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
                "torch_peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3)}
    import psutil

    return {"host_rss_gib": round(psutil.Process().memory_info().rss / 2**30, 3),
            "host_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def memory_delta(before: dict, after: dict) -> dict:
    out = dict(after)
    for k in ("device_used_gib", "host_rss_gib"):
        if k in before and k in after:
            out[k.replace("_gib", "_delta_gib")] = round(after[k] - before[k], 3)
    return out


def reset_peak(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()


# ------------------------------------------------------------------------------------------------ inputs

def task_prompts(target_dir: str, n: int, seed: int) -> List[str]:
    """The testbed task's prompts in the target's chat template (what its draft was trained on)."""
    from transformers import AutoTokenizer

    from verl_specrollout.testing.testbed.task import make_examples, prompt_messages

    tok = AutoTokenizer.from_pretrained(target_dir)
    return [tok.apply_chat_template(prompt_messages(e), add_generation_prompt=True, tokenize=False)
            for e in make_examples(n, seed=seed)]


def heavy_tail_lengths(n: int, max_tokens: int, seed: int = 0) -> List[int]:
    """Lognormal lengths (median max_tokens / 6, sigma 0.9) capped at max_tokens: most samples end early, a
    few run to the cap (the long tail of a GRPO rollout; benchmarks/grpo_rollout.py uses the same shape)."""
    rnd = random.Random(seed)
    return [int(min(max_tokens, max(4, rnd.lognormvariate(math.log(max_tokens / 6), 0.9)))) for _ in range(n)]


def read_counters(llm):
    from verl_specrollout.vllm_adapter.spec_counters import read_counters as rc

    return rc(llm)


# --------------------------------------------------------------------------------------------------- run

class Run:
    def __init__(self, args):
        self.args = args
        self.start = time.monotonic()
        self.result = {
            "schema": SCHEMA, "device": {"type": args.device, "name": None, "total_memory_gib": None},
            "python": platform.python_version(), "torch": None, "cuda": None, "vllm": None,
            "settings": {k: v for k, v in vars(args).items()},
            "complete": True, "stopped_early": None, "elapsed_s": 0.0,
            "install": {"status": "skipped", "reason": "not run yet"}, "model": {}, "engines": {},
            "steps": {name: {"status": "skipped", "reason": "not run yet"} for name in STEPS.values()},
        }
        self.engines: Optional[Engines] = None
        self.greedy_reference: Optional[list] = None

    # -- bookkeeping
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def over_budget(self) -> bool:
        return self.args.budget_s is not None and self.elapsed() > self.args.budget_s

    def save(self) -> None:
        self.result["elapsed_s"] = round(self.elapsed(), 2)
        gpu_stage.write_json(self.args.out, self.result)

    def stop(self, reason: str) -> None:
        if self.result["stopped_early"] is None:
            log(f"stopping early: {reason}")
        self.result["complete"] = False
        self.result["stopped_early"] = self.result["stopped_early"] or reason

    def budget_left(self, what: str) -> bool:
        if self.over_budget():
            self.stop(f"budget of {self.args.budget_s}s reached before {what}")
            return False
        return True

    def guarded(self, name: str, fn: Callable[[dict], None]) -> None:
        """One step: skipped past the budget, its error recorded (the next step still runs)."""
        rec = {"status": "running"}
        self.result["steps"][name] = rec
        if not self.budget_left(f"step {name}"):
            self.result["steps"][name] = {"status": "skipped", "reason": "budget"}
            self.save()
            return
        t0 = time.monotonic()
        log(f"step {name}")
        try:
            fn(rec)
            if rec["status"] == "running":
                rec["status"] = "ok"
        except Exception as exc:  # one broken step must not cost the others
            rec.update(status="failed", error=first_line(exc), traceback=traceback.format_exc()[-4000:])
            self.result["complete"] = False
            log(f"step {name} failed: {first_line(exc)}")
        rec["seconds"] = round(time.monotonic() - t0, 2)
        self.save()

    # -- a: start-up facts
    def step_startup(self, rec: dict) -> None:
        rec["engines"] = {}
        for name in ("plain", "spec"):
            llm = self.engines.get(name)
            facts = engine_facts(llm)
            self.result["engines"][name]["facts"] = facts
            rec["engines"][name] = facts
            self.save()

    # -- b: step time
    def generate_fixed(self, name: str, prompts, tokens: int, temperature: float = 0.0):
        from vllm import SamplingParams

        llm = self.engines.get(name)
        clock = self.engines.clocks[name]
        params = SamplingParams(temperature=temperature, max_tokens=tokens, ignore_eos=True)
        c0 = read_counters(llm) if name != "plain" else None
        clock.take()
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        wall = time.perf_counter() - t0
        marks = clock.take()
        acc = (read_counters(llm) - c0).mean_acceptance_length if c0 is not None else None
        return outs, wall, marks, acc

    def set_k(self, k: int, skip: Optional[bool] = None) -> None:
        sched = self.engines.sched("spec")
        sched.set_policy("static", [[1, self.args.max_num_seqs, k]])
        if skip is not None:
            self.engines.get("spec").collective_rpc(_rpc_set_k0_skip, args=(skip,))
            sched.set_skip_draft_at_k0(skip)

    def step_step_time(self, rec: dict) -> None:
        a = self.args
        rec.update(points=[], k0_over_plain=[], tokens_per_request=a.tokens)
        prompts_all = task_prompts(self.engines.target, max(a.batches), seed=4242)
        variants = [("plain", None, None), ("k0_skip_on", 0, True), ("k0_skip_off", 0, False)]
        variants += [(f"k{k}", k, True) for k in a.ks]
        for _, k, skip in variants[:1] + variants[1:2]:  # warm-up: compile paths of both engines
            name = "plain" if k is None else "spec"
            if k is not None:
                self.set_k(k, skip)
            self.generate_fixed(name, prompts_all[:2], 4)
        for batch in a.batches:
            prompts = prompts_all[:batch]
            row = {}
            for variant, k, skip in variants:
                if not self.budget_left(f"step_time B={batch} {variant}"):
                    rec["status"] = "partial"
                    return
                name = "plain" if k is None else "spec"
                if k is not None:
                    self.set_k(k, skip)
                best = None
                for _ in range(a.repeats):
                    outs, wall, marks, acc = self.generate_fixed(name, prompts, a.tokens)
                    ms = step_ms(marks, batch)
                    point = {"batch": batch, "variant": variant, "k": k, "step_ms": ms, "steps": len(marks),
                             "wall_s": round(wall, 4), "tokens": sum(len(o.outputs[0].token_ids) for o in outs),
                             "acceptance_length": None if acc is None else round(acc, 4)}
                    if best is None or (ms is not None and (best["step_ms"] is None or ms < best["step_ms"])):
                        best = point
                rec["points"].append(best)
                row[variant] = best["step_ms"]
                self.save()
            if row.get("plain"):
                rec["k0_over_plain"].append({
                    "batch": batch,
                    "skip_on": round(row["k0_skip_on"] / row["plain"], 4) if row.get("k0_skip_on") else None,
                    "skip_off": round(row["k0_skip_off"] / row["plain"], 4) if row.get("k0_skip_off") else None})
            log("B=%d step ms: %s" % (batch, ", ".join(f"{v} {row[v]}" for v in row)))
        for name in ("plain", "spec"):
            self.engines.note_memory(name, "after_step_time")

    # -- e (engines already up): greedy tokens of ours with graphs against plain
    def greedy(self, name: str) -> tuple:
        prompts = task_prompts(self.engines.target, self.args.greedy_prompts, seed=777)
        outs, _, _, acc = self.generate_fixed(name, prompts, self.args.greedy_tokens)
        return [list(o.outputs[0].token_ids) for o in outs], acc

    def compare(self, rec: dict, name: str) -> None:
        tokens, acc = self.greedy(name)
        ref = self.greedy_reference
        same = [a == b for a, b in zip(ref, tokens)]
        first = next((i for i, s in enumerate(same) if not s), None)
        entry = {"engine": name, "equal_prompts": sum(same), "prompts": len(same), "all_equal": all(same),
                 "acceptance_length": None if acc is None else round(acc, 4),
                 "cudagraph_mode": (self.result["engines"].get(name, {}).get("facts") or {}).get("cudagraph_mode")}
        if first is not None:
            div = next((j for j, (x, y) in enumerate(zip(ref[first], tokens[first])) if x != y), None)
            entry["first_mismatch"] = {"prompt": first, "position": div}
        rec["compared"].append(entry)
        log(f"greedy {name} vs plain: {entry['equal_prompts']}/{entry['prompts']} equal, acceptance {acc}")
        self.save()

    def step_graphs_live(self, rec: dict) -> None:
        rec.update(compared=[], reference="plain", tokens=self.args.greedy_tokens)
        self.greedy_reference, _ = self.greedy("plain")
        self.set_k(max(self.args.ks), True)
        sched = self.engines.sched("spec")
        sched.set_policy("adaptive")
        self.compare(rec, "spec")
        if self.args.device != "cuda":
            rec["variants"] = {"status": "skipped", "reason": "no CUDA graphs on vLLM-CPU: every engine is eager"}

    # -- c: GRPO-shaped rollout
    def step_grpo(self, rec: dict) -> None:
        from vllm import SamplingParams

        a = self.args
        prompts = task_prompts(self.engines.target, a.grpo_prompts, seed=4242)
        reqs = [p for p in prompts for _ in range(a.grpo_group)]
        lengths = heavy_tail_lengths(len(reqs), a.grpo_max_tokens)
        params = [SamplingParams(temperature=1.0, max_tokens=n, ignore_eos=True) for n in lengths]
        rec.update(prompts=a.grpo_prompts, group=a.grpo_group, max_tokens=a.grpo_max_tokens,
                   requests=len(reqs), tokens_requested=sum(lengths), results=[])
        policies = [("plain", None)] + [(f"static-{k}", k) for k in a.ks] + [("adaptive", None)]
        self.set_k(0, True)
        for name in ("plain", "spec"):  # warm-up: sampling at T=1 and these prompt shapes, not timed
            self.engines.get(name).generate(reqs[:a.grpo_group], params[:a.grpo_group], use_tqdm=False)
        for policy, k in policies:
            if not self.budget_left(f"grpo {policy}"):
                rec["status"] = "partial"
                break
            name = "plain" if policy == "plain" else "spec"
            llm = self.engines.get(name)
            sched = self.engines.sched("spec")
            if policy == "adaptive":
                sched.set_policy("adaptive")
            elif k is not None:
                sched.set_policy("static", [[1, a.max_num_seqs, k]])
            c0 = read_counters(llm) if name == "spec" else None
            t0 = time.perf_counter()
            outs = llm.generate(reqs, params, use_tqdm=False)
            wall = time.perf_counter() - t0
            n = sum(len(o.outputs[0].token_ids) for o in outs)
            acc = (read_counters(llm) - c0).mean_acceptance_length if c0 is not None else None
            rec["results"].append({"policy": policy, "k": k, "wall_s": round(wall, 3), "tokens": n,
                                   "tokens_per_s": round(n / wall, 2),
                                   "acceptance_length": None if acc is None else round(acc, 4)})
            log(f"grpo {policy}: {wall:.2f}s, {n / wall:.1f} tok/s, acceptance {acc}")
            self.save()
        by = {r["policy"]: r for r in rec["results"]}
        static = [r for r in rec["results"] if r["policy"].startswith("static-")]
        if static and "plain" in by:
            best = max(static, key=lambda r: r["tokens_per_s"])
            rec["best_static_k"] = best["k"]
            rec["best_static_over_plain"] = round(best["tokens_per_s"] / by["plain"]["tokens_per_s"], 4)
            if "adaptive" in by:
                rec["adaptive_over_best_static"] = round(by["adaptive"]["tokens_per_s"] / best["tokens_per_s"], 4)
                rec["adaptive_over_plain"] = round(by["adaptive"]["tokens_per_s"] / by["plain"]["tokens_per_s"], 4)
        self.engines.note_memory("spec", "after_grpo")

    # -- d: sleep level 2 and our restore
    def step_sleep(self, rec: dict) -> None:
        if self.args.device != "cuda":
            rec.update(status="skipped", reason="vLLM-CPU has no sleep mode (CuMemAllocator needs CUDA); "
                                                "tests/integration/test_sleep_wake_draft.py emulates level 2 there")
            return
        from verl_specrollout import compat
        from verl_specrollout.vllm_adapter.draft_reload import DraftReloader

        llm = self.engines.get("spec")  # the plain engine has no sleep mode: its memory is not in the pool
        self.set_k(max(self.args.ks), True)
        before, acc0 = self.greedy("spec")
        reloader = DraftReloader.for_llm(llm, bootstrap_dir=self.engines.head, initial_version=0)
        rec.update(acceptance_before=None if acc0 is None else round(acc0, 4), cycles=[])
        for cycle in range(1, self.args.sleep_cycles + 1):
            if not self.budget_left(f"sleep cycle {cycle}"):
                rec["status"] = "partial"
                return
            t0 = time.monotonic()
            c = {"cycle": cycle}
            kept = reloader.keep()
            c["kept"] = None if kept is None else {k: kept.get(k) for k in ("names", "kept_bytes") if k in kept}
            llm.sleep(level=2)
            c["asleep"] = memory_now("cuda")
            llm.wake_up()
            llm.collective_rpc(compat.VLLM_WORKER_RELOAD_WEIGHTS)  # the target from disk (veRL syncs the actor's instead)
            version = reloader.restore()
            c["restore_ok"] = version == 0 and bool(reloader.last_result and reloader.last_result.get("ok"))
            tokens, acc = self.greedy("spec")
            c.update(awake=memory_now("cuda"), tokens_equal=tokens == before,
                     acceptance_length=None if acc is None else round(acc, 4),
                     acceptance_equal=acc == acc0, seconds=round(time.monotonic() - t0, 2))
            rec["cycles"].append(c)
            log(f"sleep cycle {cycle}: restore {c['restore_ok']}, tokens equal {c['tokens_equal']}, "
                f"acceptance {acc} (before {acc0})")
            self.save()
        rec["all_equal"] = all(c["tokens_equal"] and c["acceptance_equal"] for c in rec["cycles"])

    # -- e (CUDA): engines started another way
    def step_graph_variants(self, rec: dict) -> None:
        if self.args.device != "cuda":
            return
        self.engines.close_all()
        rec.setdefault("compared", [])
        for name in self.args.variants:
            if not self.budget_left(f"graphs {name}"):
                rec["status"] = "partial"
                return
            try:
                self.engines.get(name)
                self.result["engines"][name]["facts"] = engine_facts(self.engines.live[name])
                self.set_k_on(name)
                self.compare(rec, name)
                rec["compared"][-1]["step_ms_at_max_k"] = self.variant_step_ms(name)
                self.save()
            except Exception as exc:
                rec["compared"].append({"engine": name, "error": first_line(exc)})
                self.save()
            finally:
                self.engines.close(name)

    def variant_step_ms(self, name: str) -> dict:
        """Decode step at K = max_k for a few B: the variant's graphs against step b's k<max_k> points."""
        from verl_specrollout import compat

        a = self.args
        sched = compat.in_process_scheduler(self.engines.get(name))
        if getattr(sched, "planner", None) is not None:
            sched.set_policy("static", [[1, a.max_num_seqs, max(a.ks)]])
        prompts = task_prompts(self.engines.target, max(a.variant_batches), seed=4242)
        out = {}
        for batch in a.variant_batches:
            if not self.budget_left(f"graphs {name} B={batch}"):
                break
            _, _, marks, acc = self.generate_fixed(name, prompts[:batch], a.tokens)
            out[str(batch)] = {"step_ms": step_ms(marks, batch),
                               "acceptance_length": None if acc is None else round(acc, 4)}
        return out

    def set_k_on(self, name: str) -> None:
        from verl_specrollout import compat

        sched = compat.in_process_scheduler(self.engines.get(name))
        if getattr(sched, "planner", None) is not None:
            sched.set_policy("adaptive")

    # -- f: memory
    def step_memory(self, rec: dict) -> None:
        for name in list(self.engines.live):
            self.engines.note_memory(name, "end")
        rec["per_engine"] = json.loads(json.dumps({n: e.get("memory") for n, e in self.result["engines"].items()}))
        rec["process"] = memory_now(self.args.device)

    def main(self) -> int:
        a = self.args
        self.save()
        if a.device == "cuda" and not a.skip_install:
            rec = self.result["install"] = {"status": "running"}
            t0 = time.monotonic()
            try:
                gpu_stage.install(a.stage_dir, a.site_dir, a.work_dir, REPO, rec)
                gpu_stage.activate_site(a.site_dir, REPO)
                rec["plugin_entry_point"] = check_imports(rec)
                rec.update(status="ok", seconds=round(time.monotonic() - t0, 1))
            except Exception as exc:
                rec.update(status="failed", error=first_line(exc), traceback=traceback.format_exc()[-4000:])
                self.result["complete"] = False
                self.stop(f"install failed: {first_line(exc)}")
                self.save()
                return 2
        else:
            self.result["install"] = {"status": "skipped", "reason": "--device cpu: the project venv's vLLM" if
                                      a.device == "cpu" else "--skip-install"}
            if a.device == "cuda":
                gpu_stage.activate_site(a.site_dir, REPO)
        self.describe_device()
        try:
            target, head = build_model(a, self.result["model"])
        except Exception as exc:
            self.result["model"].update(error=first_line(exc), traceback=traceback.format_exc()[-4000:])
            self.stop(f"model: {first_line(exc)}")
            self.save()
            return 2
        self.save()
        self.engines = Engines(self, target, head)
        # Most wanted first, for a run cut by its budget: sleep before the GRPO rollout (which then also
        # runs on an engine that slept three times), the extra engines of e last.
        order = [("a", self.step_startup), ("b", self.step_step_time), ("e", self.step_graphs_live),
                 ("d", self.step_sleep), ("c", self.step_grpo), ("e2", self.step_graph_variants),
                 ("f", self.step_memory)]
        for letter, fn in order:
            if letter[0] not in a.steps:
                self.result["steps"][STEPS[letter[0]]] = {"status": "skipped", "reason": "not in --steps"}
                continue
            if letter == "e2":
                rec = self.result["steps"]["graphs"]
                if rec.get("status") in ("ok", "partial"):
                    self.guarded_into(rec, fn)
                continue
            self.guarded(STEPS[letter], fn)
        self.engines.close_all()
        self.save()
        print_summary(self.result)
        log(f"wrote {a.out}")
        return 0 if self.result["steps"]["step_time"].get("points") else 2

    def guarded_into(self, rec: dict, fn: Callable[[dict], None]) -> None:
        """A second part of a step that already ran (e on CUDA): failures land in that step's record."""
        try:
            fn(rec)
        except Exception as exc:
            rec.update(status="partial", variants_error=first_line(exc))
        self.save()

    def describe_device(self) -> None:
        import torch

        d = self.result["device"]
        self.result["torch"] = torch.__version__
        self.result["glibc"] = "-".join(platform.libc_ver())
        self.result["cuda"] = torch.version.cuda
        if self.args.device == "cuda":
            d["name"] = torch.cuda.get_device_name(0)
            d["total_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        else:
            d["name"] = platform.processor() or platform.machine()
        try:
            import vllm

            self.result["vllm"] = vllm.__version__
        except Exception as exc:
            self.result["vllm"] = f"import failed: {first_line(exc)}"


# ---------------------------------------------------------------------------------------------- schema

STATUSES = ("ok", "failed", "skipped", "partial")
TOP_KEYS = ("schema", "device", "python", "torch", "cuda", "vllm", "settings", "complete", "stopped_early",
            "elapsed_s", "install", "model", "engines", "steps")
POINT_KEYS = ("batch", "variant", "k", "step_ms", "steps", "wall_s", "tokens", "acceptance_length")
FACT_KEYS = ("scheduler_class", "async_scheduling", "cudagraph_mode", "draft_sample_method", "model_runner",
             "v1_runner", "worker_cudagraph_mode")


def validate_result(result: dict) -> List[str]:
    """What is wrong with a finished run's JSON against the schema above ([] when nothing)."""
    problems = [f"missing key {k!r}" for k in TOP_KEYS if k not in result]
    if problems:
        return problems
    if result["schema"] != SCHEMA:
        problems.append(f"schema {result['schema']!r}")
    if set(result["steps"]) != set(STEPS.values()):
        problems.append(f"steps {sorted(result['steps'])}, expected {sorted(STEPS.values())}")
    for name, rec in result["steps"].items():
        if rec.get("status") not in STATUSES:
            problems.append(f"step {name}: status {rec.get('status')!r}")
        elif rec["status"] in ("failed", "skipped") and not (rec.get("error") or rec.get("reason")):
            problems.append(f"step {name}: {rec['status']} without an error or reason")
    for p in result["steps"].get("step_time", {}).get("points", []):
        missing = [k for k in POINT_KEYS if k not in p]
        if missing:
            problems.append(f"step_time point {p.get('batch')}/{p.get('variant')}: missing {missing}")
    for name, e in result["engines"].items():
        if "facts" in e:
            missing = [k for k in FACT_KEYS if k not in e["facts"]]
            if missing:
                problems.append(f"engine {name}: facts missing {missing}")
    if result["complete"] and result["stopped_early"]:
        problems.append("complete but stopped_early is set")
    return problems


# --------------------------------------------------------------------------------------------- summary

def print_summary(result: dict) -> None:
    print(f"\n== bring-up on {result['device']['name']} (vLLM {result['vllm']}, torch {result['torch']}) ==")
    for name, e in result["engines"].items():
        f = e.get("facts") or {}
        print(f"  {name:11s} start {e.get('start_s')}s  graphs {f.get('cudagraph_mode')}/{f.get('worker_cudagraph_mode')}  "
              f"async {f.get('async_scheduling')}  runner {str(f.get('model_runner')).rsplit('.', 1)[-1]}  "
              f"draft {f.get('draft_sample_method')}")
    st = result["steps"]
    for r in st["step_time"].get("k0_over_plain", []):
        print(f"  B={r['batch']}: K=0 / plain step = {r['skip_on']} (skip on), {r['skip_off']} (skip off)")
    g = st["grpo"]
    if g.get("results"):
        print("  grpo: " + ", ".join(f"{r['policy']} {r['tokens_per_s']} tok/s" for r in g["results"]))
    for c in st["graphs"].get("compared", []):
        print(f"  greedy {c['engine']} vs plain: {c.get('equal_prompts')}/{c.get('prompts')} {c.get('error', '')}")
    print(f"  sleep: {st['sleep'].get('status')} {st['sleep'].get('reason', '')}"
          f"{' all equal ' + str(st['sleep'].get('all_equal')) if 'all_equal' in st['sleep'] else ''}")
    for name, rec in st.items():
        if rec.get("status") not in ("ok",):
            print(f"  step {name}: {rec.get('status')} {rec.get('error') or rec.get('reason') or ''}")
    if not result["complete"]:
        print(f"  (incomplete: {result['stopped_early']})")


# ------------------------------------------------------------------------------------------------- args

def _ints(text: str) -> List[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated integers expected, got {text!r}") from None
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"non-negative integers expected, got {text!r}")
    return out


def _steps(text: str) -> str:
    letters = "".join(x.strip() for x in text.split(",")) if "," in text else text.strip()
    bad = sorted(set(letters) - set(STEPS))
    if bad or not letters:
        raise argparse.ArgumentTypeError(f"steps are letters of {''.join(STEPS)} ({STEPS}), got {text!r}")
    return letters


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when torch sees one")
    p.add_argument("--tiny", action="store_true", help="small grid and budgets (CPU mode, tests)")
    p.add_argument("--out", default=None, help="default $OUT/gpu_bringup.json, else results/gpu_bringup.json")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting points and steps after this many seconds (default 480; tiny 150; <= 0: none)")
    p.add_argument("--steps", type=_steps, default="abcdef", help="which of a-f to run (default all)")
    p.add_argument("--stage-dir", default=os.path.join(REPO, ".gpu_stage"), help="what gpu_stage_vllm.sh made")
    p.add_argument("--site-dir", default="/tmp/site", help="where vLLM and the wheels are unpacked (CUDA)")
    p.add_argument("--work-dir", default="/tmp/specrollout_bringup", help="reassembled archive, expanded model")
    p.add_argument("--skip-install", action="store_true", help="CUDA: vLLM is installed already")
    p.add_argument("--testbed-dir", default=None,
                   help="a dir with the trained target/ and eagle3/ (default: --stage-dir's testbed, else the "
                        "local testbed cache: medium if built, else tiny)")
    p.add_argument("--shape", choices=["7b", "regime", "tiny"], default=None, help="default 7b (CUDA), tiny (CPU)")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default=None, help="default bfloat16 (CUDA), float32 (CPU)")
    p.add_argument("--batches", type=_ints, default=None, help="step-time batch sizes (default 1,16,128; tiny 1,4)")
    p.add_argument("--ks", type=_ints, default=None, help="static K of the step-time grid (default 1,2,4; tiny 1,2)")
    p.add_argument("--tokens", type=int, default=None, help="decode tokens per request per point (default 64; tiny 12)")
    p.add_argument("--repeats", type=int, default=None, help="repeats per point, fastest kept (default 1)")
    p.add_argument("--grpo-prompts", type=int, default=None, help="default 16 (tiny 2)")
    p.add_argument("--grpo-group", type=int, default=None, help="samples per prompt (default 8; tiny 4)")
    p.add_argument("--grpo-max-tokens", type=int, default=None, help="default 256 (tiny 24)")
    p.add_argument("--greedy-prompts", type=int, default=None, help="greedy equality prompts (default 16; tiny 4)")
    p.add_argument("--greedy-tokens", type=int, default=None, help="greedy tokens per prompt (default 64; tiny 16)")
    p.add_argument("--sleep-cycles", type=int, default=3)
    p.add_argument("--variants", default="spec_eager,spec_v2,spec_keep",
                   help="CUDA engines for step e beyond the live ones: spec_eager (enforce_eager), spec_keep "
                        "(graph_plan=keep_user_mode), spec_v2 (V2 model runner, static K); '' for none")
    p.add_argument("--variant-batches", type=_ints, default=[1, 16],
                   help="batch sizes of the variants' K=max_k step time (step e on CUDA)")
    p.add_argument("--max-num-seqs", type=int, default=None,
                   help="default max(batches, GRPO requests): veRL's 256 would capture graphs for sizes never run")
    p.add_argument("--max-model-len", type=int, default=1024, help="the testbed's max_position_embeddings")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.35,
                   help="per engine; two run side by side (plain and ours)")
    p.add_argument("--kv-cache-gib", type=float, default=8.0, help="KV cache per engine on CUDA")
    args = p.parse_args(argv)
    if args.device is None:
        try:
            import torch

            args.device = "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            args.device = "cpu"
    tiny, cuda = args.tiny, args.device == "cuda"
    defaults = dict(budget_s=150.0 if tiny else 480.0, shape="7b" if cuda and not tiny else "tiny",
                    dtype="bfloat16" if cuda else "float32", batches=[1, 4] if tiny else [1, 16, 128],
                    ks=[1, 2] if tiny else [1, 2, 4], tokens=12 if tiny else 64, repeats=1,
                    grpo_prompts=2 if tiny else 16, grpo_group=4 if tiny else 8, grpo_max_tokens=24 if tiny else 256,
                    greedy_prompts=4 if tiny else 16, greedy_tokens=16 if tiny else 64)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.budget_s is not None and args.budget_s <= 0:
        args.budget_s = None
    if 0 in args.batches:
        p.error("--batches: batch sizes must be >= 1")
    if 0 in args.ks:
        p.error("--ks: K=0 is always measured (skip on and off); list K >= 1")
    for name in ("tokens", "repeats", "grpo_prompts", "grpo_group", "grpo_max_tokens", "greedy_prompts",
                 "greedy_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    args.variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in args.variants if v not in ("spec_eager", "spec_keep", "spec_v2")]
    if bad:
        p.error(f"--variants: unknown {bad}")
    if args.max_num_seqs is None:
        args.max_num_seqs = max([args.grpo_prompts * args.grpo_group] + args.batches)
    if args.out is None:
        args.out = os.path.join(os.environ.get("OUT") or "results", "gpu_bringup.json")
    if args.testbed_dir is None:
        args.testbed_dir = default_testbed_dir(args.stage_dir) if cuda else None
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: schedulers and workers reachable
    if args.device == "cpu":
        os.environ.setdefault("SPECROLLOUT_PLATFORM", "cpu")
    log(f"device {args.device}, out {args.out}, budget {args.budget_s}s, steps {args.steps}")
    return Run(args).main()


if __name__ == "__main__":
    sys.exit(main())
