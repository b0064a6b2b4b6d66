"""Decoupled speculation on the CPU: two rollout replicas, one core each, a GRPO-shaped rollout.

    python -m benchmarks.decoupled [--testbed regime] [--prompts 8 --group 8 --max-tokens 128 --repeats 3]

Needs the whole machine (both cores): run it when nothing else does. Each replica is a Ray actor
pinned to its own core (``sched_setaffinity``, one torch thread, vLLM's OpenMP bound to it) holding
one in-process vLLM-CPU engine per mode:

* ``plain``: no speculation;
* ``coupled``: ``eagle3+group``, our adaptive planner, the EAGLE-3 head on the critical path;
* ``coupled_lm``: ``draft_model+group``, the same with the draft LM the decoupled drafters run;
* ``decoupled``: the same engine config plus ``decoupled.enable``: a replica whose share of the
  rollout is done runs the draft LM (``IdleDrafter``) for the requests still running on the other
  one, through the job's exchange actor (verl_specrollout/decoupled);
* ``link_only`` (ask for it with ``--modes``): ``decoupled`` with no drafter: the link, the exchange
  and the per-step calls run, no tail comes: their cost to the verifier.

Two phases, each timed per mode:

* ``rollout``: a prompt's G samples go to one replica (our router does that for group methods),
  prompts split between the replicas at random, balanced in count: the replica that drew the
  longer responses finishes last, and the rollout time is the time both took (the last one's);
* ``tail``: the long tail alone: replica 1 runs ``--tail-prompts`` prompts' groups, replica 0 has
  nothing (in ``decoupled`` it drafts for replica 1 from the start).

Sampling is at T=1 (GRPO's), so response lengths differ between runs: each line reports tokens
and tokens/s beside seconds, and the ratio lines use both. Every mode runs once untimed first
(engine start, the drafters' LM load); then phases and modes are interleaved within each repeat
(mode order rotated per repeat); medians over repeats, ratio lines at the end.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import time

import numpy as np

from benchmarks import common

MODES = ("plain", "coupled", "coupled_lm", "decoupled")
# Not in the default set: the decoupled engine with no drafter anywhere (its link and the exchange
# run, no tail ever comes): what the machinery costs the verifier.
EXTRA_MODES = ("link_only",)
PHASES = ("rollout", "tail")
EXCHANGE = "bench_decoupled"
NAMESPACE = "specrollout_bench"


def _cfg(mode: str, pair, max_k: int, max_batch: int, exchange_ms: float = 2.0) -> dict:
    if mode == "plain":
        return {}
    method = "draft_model+group" if mode == "coupled_lm" else "eagle3+group"
    cfg = {"enable": True, "method": method, "draft_path": pair.draft_for(method), "max_k": max_k,
           "planner": {"mode": "adaptive", "max_batch": max_batch},
           "learner": {"actor_namespace": NAMESPACE}}
    if mode in ("decoupled", "link_only"):
        cfg["decoupled"] = {"enable": True, "draft_lm_path": pair.drafts["draft_model"], "exchange_name": EXCHANGE,
                            "exchange_ms": exchange_ms}
    return cfg


class Replica:
    """One rollout replica on one core: an engine per mode, and its idle drafter."""

    def __init__(self, index: int, core: int, target: str, cfgs: dict, engine_kw: dict):
        os.sched_setaffinity(0, {core})
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(core)
        import torch

        torch.set_num_threads(1)
        from verl_specrollout.config import SpecRolloutConfig
        from verl_specrollout.decoupled.engine import IdleDrafter
        from verl_specrollout.vllm_adapter.offline_engine import make_llm

        self.index = index
        self._seen = {}  # mode -> the workers' cumulative counts after its last run
        self.engines = {}
        for mode, raw in cfgs.items():
            cfg = SpecRolloutConfig.from_dict(raw) if raw else None
            self.engines[mode] = make_llm(target, cfg, **engine_kw)
        dec = cfgs.get("decoupled")
        self.idle = IdleDrafter(SpecRolloutConfig.from_dict(dec), f"replica-{index}") if dec else None

    def generate(self, mode: str, prompts: list, n: int, max_tokens: int) -> dict:
        from vllm import SamplingParams

        from verl_specrollout.metrics import counts_delta
        from verl_specrollout.vllm_adapter.group_proposer import decoupled_engine_idle, worker_stats

        if self.idle is not None:
            self.idle.on_work()
        llm = self.engines[mode]
        params = SamplingParams(n=n, temperature=1.0, max_tokens=max_tokens)
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False) if prompts else []
        seconds = time.perf_counter() - t0
        # The workers' counts are cumulative per engine: this run's are the difference.
        now = llm.collective_rpc(worker_stats)[0] if mode != "plain" else {}
        stats = counts_delta(now, self._seen.get(mode, {}))
        self._seen[mode] = now
        if mode in ("decoupled", "link_only"):
            # This replica's share is done: its link closes its requests (as veRL's server has it
            # do when nothing is in flight), and it drafts for the other one.
            llm.collective_rpc(decoupled_engine_idle)
            if mode == "decoupled" and self.idle is not None:
                self.idle.on_idle()
        return {"seconds": seconds, "tokens": sum(len(c.token_ids) for o in outs for c in o.outputs),
                "sources": stats.get("sources", {}), "link": stats.get("decoupled", {})}

    def stop_drafting(self) -> dict:
        if self.idle is None:
            return {}
        self.idle.on_work()
        return self.idle.stats()


def split_prompts(n_prompts: int, seed: int) -> list:
    """Replica of each prompt: balanced in count, at random."""
    rng = np.random.default_rng(seed)
    where = np.arange(n_prompts) % 2
    rng.shuffle(where)
    return where.tolist()


def summarise(runs: list, modes: list) -> dict:
    """Medians per phase and mode (seconds, tok/s), the ratio lines, the decoupled source's counts."""
    summary = {}
    for phase in [p for p in PHASES if any(r["phase"] == p for r in runs)]:
        sel = {m: [r for r in runs if r["phase"] == phase and r["mode"] == m] for m in modes}
        med = {m: statistics.median(r["seconds"] for r in rs) for m, rs in sel.items() if rs}
        rate = {m: statistics.median(r["tokens"] / r["seconds"] for r in rs) for m, rs in sel.items() if rs}
        for m in med:
            summary[f"{phase}_{m}_seconds"] = round(med[m], 3)
            summary[f"{phase}_{m}_tok_s"] = round(rate[m], 2)
        for a, b in (("plain", "coupled"), ("plain", "coupled_lm"), ("plain", "decoupled"), ("coupled", "decoupled"),
                     ("coupled_lm", "decoupled"), ("coupled", "link_only"), ("link_only", "decoupled")):
            if a in med and b in med:
                summary[f"{phase}_{b}_vs_{a}"] = round(med[a] / med[b], 3)
                summary[f"{phase}_{b}_vs_{a}_tok_s"] = round(rate[b] / rate[a], 3)
                print(f"{phase}: {b} / {a}: {med[a] / med[b]:.3f}x by median seconds ({med[b]:.2f} vs {med[a]:.2f}), "
                      f"{rate[b] / rate[a]:.3f}x by median tok/s ({rate[b]:.1f} vs {rate[a]:.1f})")
        dec = [x["sources"].get("decoupled", {}) for r in sel.get("decoupled", []) for x in r["replicas"]]
        links = [x["link"] for r in sel.get("decoupled", []) for x in r["replicas"] if x["link"]]
        if dec:
            prop, acc = sum(d.get("proposed", 0) for d in dec), sum(d.get("accepted", 0) for d in dec)
            board = collections.Counter()
            for k in links:
                board.update({n: v for n, v in k.items() if n.startswith(("board/", "link/"))})
            hits, misses = board["board/hits"], board["board/miss_empty"]
            model = [x["sources"].get("model", {}) for r in sel.get("decoupled", []) for x in r["replicas"]]
            m_prop, m_acc = sum(d.get("proposed", 0) for d in model), sum(d.get("accepted", 0) for d in model)
            summary[f"{phase}_decoupled_proposed"], summary[f"{phase}_decoupled_accepted"] = prop, acc
            summary[f"{phase}_decoupled_hit_rate"] = round(hits / max(1, hits + misses), 3)
            summary[f"{phase}_decoupled_board"] = dict(board)
            print(f"{phase}: decoupled source: {prop} draft tokens verified, {acc} accepted "
                  f"({acc / max(1, prop):.2f}; the coupled head beside it {m_acc}/{m_prop} = {m_acc / max(1, m_prop):.2f}); "
                  f"a tail fit {hits} of {hits + misses} asks; tails received {board['link/tails_received']}, "
                  f"dropped stale {board['board/dropped_stale']}, lagging {board['board/dropped_lagging']}")
    return summary


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(ap, "decoupled", own_pair=False, max_k=4, max_tokens=128, repeats=3)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8, help="samples per prompt (GRPO's G)")
    ap.add_argument("--tail-prompts", type=int, default=2, help="prompts of the tail phase (0: no tail phase)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--exchange-ms", type=float, default=2.0, help="decoupled.exchange_ms of the decoupled engines")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    modes = args.modes.split(",")
    bad = [m for m in modes if m not in MODES + EXTRA_MODES]
    if bad:
        raise SystemExit(f"--modes: unknown {bad}; choose from {MODES + EXTRA_MODES}")
    import ray

    for name, default in (("target", None), ("prompts_file", None), ("method", "eagle3+group")):
        if not hasattr(args, name):  # testbed-only: the testbed's target, head and draft LM
            setattr(args, name, default)
    pair = common.model_pair(args)
    prompts = common.load_prompts(pair, args.prompts)
    where = split_prompts(len(prompts), args.seed)
    max_batch = args.group * max(where.count(0), where.count(1))
    cfgs = {m: _cfg(m, pair, args.max_k, max_batch, args.exchange_ms) for m in modes}
    engine_kw = dict(dtype=args.dtype, max_num_seqs=max_batch, **common.engine_settings(args))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace=NAMESPACE)
    try:
        cls = ray.remote(num_cpus=1)(Replica)
        replicas = [cls.remote(i, i % os.cpu_count(), pair.target_dir, cfgs, engine_kw) for i in range(2)]
        phases = {"rollout": [[p for p, w in zip(prompts, where) if w == r] for r in range(2)]}
        if args.tail_prompts > 0:
            phases["tail"] = [[], prompts[:args.tail_prompts]]
        shares = phases["rollout"]
        # Untimed warm-up: the actors' engines start, each mode runs once, the drafters load their LM.
        for mode in modes:
            ray.get([r.generate.remote(mode, shares[i], args.group, min(args.max_tokens, 16))
                     for i, r in enumerate(replicas)])
            ray.get([r.stop_drafting.remote() for r in replicas])
        runs = []
        total = args.repeats * len(modes) * len(phases)
        t_start = time.perf_counter()
        for rep in range(args.repeats):
            order = modes[rep % len(modes):] + modes[:rep % len(modes)]
            for phase, share in phases.items():
                for mode in order:
                    t0 = time.perf_counter()
                    res = ray.get([r.generate.remote(mode, share[i], args.group, args.max_tokens)
                                   for i, r in enumerate(replicas)])
                    wall = time.perf_counter() - t0
                    drafters = ray.get([r.stop_drafting.remote() for r in replicas])
                    tokens = sum(x["tokens"] for x in res)
                    runs.append({"repeat": rep, "phase": phase, "mode": mode, "seconds": wall, "tokens": tokens,
                                 "replicas": res, "drafters": drafters})
                    done = len(runs)
                    eta = (time.perf_counter() - t_start) / done * (total - done)
                    each = ", ".join("%.2f" % x["seconds"] for x in res)
                    print(f"[decoupled] {done}/{total} repeat {rep} {phase} {mode}: {wall:.2f}s, {tokens} tokens, "
                          f"{tokens / wall:.1f} tok/s (replicas {each}), ETA {eta:.0f}s", flush=True)
    finally:
        ray.shutdown()
    summary = summarise(runs, modes)
    payload = {"benchmark": "decoupled", "provenance": common.provenance(args, pair), "config": vars(args),
               "split": where, "summary": summary, "results": runs}
    common.write_json(common.out_path(args), payload)
    return payload


if __name__ == "__main__":
    main()
