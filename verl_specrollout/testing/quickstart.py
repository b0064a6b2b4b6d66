"""The main job on the embedded default testbeds.

    python -m verl_specrollout.testing.quickstart [--rollout-size regime-tiny] [--size tiny]
                                                  [--grpo-steps 4] [--skip-grpo | --skip-rollout]

1. Speed: a GRPO-shaped rollout (P prompts x G=8 samples, T=1) through vLLM with and without
   speculation (EAGLE-3 head, adaptive K), configured exactly as the veRL override does, on the
   ``regime-tiny`` testbed: the tiny target expanded function-preservingly to a 157 M-parameter
   shape served in bfloat16, so that, as with a 7B model on a GPU, a draft pass is a small part of
   a decode step and verifying a few tokens costs about one. Both engines stay up and their runs
   alternate; medians of tokens/s, acceptance length, speedup.
2. The veRL path: a short GRPO run through veRL's own default trainer (V1, sync mode; ``--trainer``
   picks another) on this CPU machine on the tiny
   testbed, with the speculative rollout (+ online draft learner) and without: per-step rollout
   time, acceptance length, K chosen, draft version, reward. A 2.7 M target is all framework
   overhead on a CPU, so this part proves the integration, not a speed-up. Each veRL step is echoed
   as it lands in veRL's metrics log (i/N, ETA), and ``<out>/rl_metrics.png`` draws acceptance
   length, K and draft version per step, spec vs plain (verl_specrollout/testing/rl_plot.py).
The last line is a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import json
import statistics
import sys
import threading
import time

from verl_specrollout.config import GROUP_BASE_METHODS, METHODS, SpecRolloutConfig
from verl_specrollout.progress import Progress, stage
from verl_specrollout.testing.e2e.grpo_cpu import DEFAULT_TRAINER, TRAINERS


def _timed(llm, prompts, params):
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    return time.perf_counter() - t0, sum(len(c.token_ids) for o in outs for c in o.outputs), outs


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny", help="testbed of the veRL GRPO run (part 2)")
    ap.add_argument("--rollout-size", default="regime-tiny",
                    help="testbed of the rollout speed comparison (part 1); regime sizes run in bfloat16")
    ap.add_argument("--prompts", type=int, default=None,
                    help="prompts of part 1 (default 4 on regime sizes, about 3x their crossover "
                         "concurrency once x G; else 16)")
    ap.add_argument("--group", type=int, default=8, help="G samples per prompt")
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--method", default="eagle3", choices=list(METHODS))
    ap.add_argument("--mode", default="adaptive", choices=["adaptive", "static"])
    ap.add_argument("--max-k", type=int, default=4)
    ap.add_argument("--draft-sampling", default="auto", choices=["auto", "greedy", "probabilistic"],
                    help="specrollout.draft_sampling (both parts)")
    ap.add_argument("--repeats", type=int, default=5, help="alternating plain/spec runs of part 1")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--grpo-steps", type=int, default=4)
    ap.add_argument("--skip-grpo", action="store_true", help="only the rollout comparison (part 1)")
    ap.add_argument("--skip-rollout", action="store_true", help="only the veRL GRPO runs (part 2)")
    ap.add_argument("--no-learner", action="store_true", help="GRPO with a frozen draft")
    ap.add_argument("--trainer", default=DEFAULT_TRAINER, choices=list(TRAINERS),
                    help="veRL trainer of part 2 (default: veRL's default, the V1 trainer in sync mode)")
    ap.add_argument("--out", default=os.path.join(os.path.expanduser("~"), "specrollout_runs", "quickstart"))
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    from verl_specrollout.testing.testbed import build_testbed

    args = parse_args(argv)
    if args.skip_grpo and args.skip_rollout:
        raise SystemExit("--skip-grpo and --skip-rollout together leave nothing to run")
    regime = args.rollout_size.startswith("regime")
    if args.prompts is None:
        args.prompts = 4 if regime else 16
    t0, start = time.perf_counter(), time.monotonic()
    parts = (0 if args.skip_rollout else 1) + (0 if args.skip_grpo else 1)
    summary = {}
    if not args.skip_rollout:
        stage(1, parts, f"rollout speed, plain vs speculative, on the {args.rollout_size} testbed", "quickstart")
        rollout_tb = build_testbed(args.rollout_size)
        print(f"[quickstart] testbed {args.rollout_size} ready in {time.perf_counter() - t0:.1f}s at {rollout_tb.root}",
              flush=True)
        summary = _rollouts(rollout_tb, args, dtype="bfloat16" if regime else "float32")
    if not args.skip_grpo:
        stage(parts, parts, f"veRL GRPO, plain then speculative, {args.grpo_steps} steps each, on the {args.size} "
              "testbed", "quickstart", since=start)
        tb = build_testbed(args.size)
        summary.update(_grpo(tb, args))
    print(json.dumps(summary), flush=True)
    return summary if "grpo_error" not in summary else None


def _rollouts(tb, args, dtype: str) -> dict:
    """Part 1: a GRPO-shaped rollout (prompts x G samples) on a plain engine and on a speculative
    engine configured exactly as the veRL override configures it."""
    from transformers import AutoTokenizer
    from vllm import SamplingParams

    from verl_specrollout.testing.testbed.reward import compute_score
    from verl_specrollout.testing.testbed.task import DATA_SOURCE, make_examples, prompt_messages
    from verl_specrollout.vllm_adapter.offline_engine import make_llm
    from verl_specrollout.vllm_adapter.spec_counters import read_counters

    tok = AutoTokenizer.from_pretrained(tb.target_dir)
    examples = make_examples(args.prompts, seed=12345)
    prompts = [tok.apply_chat_template(prompt_messages(ex), add_generation_prompt=True, tokenize=False) for ex in examples]
    params = SamplingParams(n=args.group, temperature=args.temperature, max_tokens=args.max_tokens)

    def reward(outs):
        scores = [compute_score(DATA_SOURCE, c.text, str(ex.answer)) for ex, o in zip(examples, outs) for c in o.outputs]
        return sum(scores) / len(scores)

    draft = _draft_dir(tb, args.method)
    spec = SpecRolloutConfig.from_dict(
        {"enable": True, "method": args.method, "draft_path": draft, "max_k": args.max_k,
         "draft_sampling": args.draft_sampling,
         "planner": {"mode": args.mode, "max_batch": max(256, args.prompts * args.group)}}
    )
    # Both engines stay up and their runs alternate: separate engine instances and minutes apart
    # differ by 10-30 % on a shared CPU, alternating runs inside two live engines by far less.
    plain_llm = make_llm(tb.target_dir, dtype=dtype)
    spec_llm = make_llm(tb.target_dir, spec, dtype=dtype)
    warm = prompts[: max(1, len(prompts) // 2)]
    for llm in (plain_llm, spec_llm):  # compile paths; the planner's cold start
        llm.generate(warm, params, use_tqdm=False)
    runs = {"plain": [], "spec": []}
    before = read_counters(spec_llm)
    progress = Progress(2 * args.repeats, "quickstart rollouts", every_s=0, unit="run")
    for _ in range(args.repeats):
        for name, llm in (("plain", plain_llm), ("spec", spec_llm)):
            runs[name].append(_timed(llm, prompts, params))
            sec, n, _ = runs[name][-1]
            progress.update(note=f"{name} {n / sec:.1f} tok/s")
    counters = read_counters(spec_llm) - before
    del plain_llm, spec_llm
    gc.collect()

    def tps(name):
        return statistics.median(n / sec for sec, n, _ in runs[name])

    paired = [(ns / ss) / (np_ / sp) for (sp, np_, _), (ss, ns, _) in zip(runs["plain"], runs["spec"])]
    tok_plain, tok_spec = runs["plain"][-1][1], runs["spec"][-1][1]
    sec_plain, sec_spec = (statistics.median(r[0] for r in runs[n]) for n in ("plain", "spec"))
    reward_plain, reward_spec = reward(runs["plain"][-1][2]), reward(runs["spec"][-1][2])
    summary = {
        "size": args.size,
        "rollout_size": args.rollout_size,
        "dtype": dtype,
        "method": args.method,
        "draft_sampling": args.draft_sampling,
        "mode": args.mode,
        "prompts": args.prompts,
        "group": args.group,
        "temperature": args.temperature,
        "tokens_per_s_plain": round(tps("plain"), 1),
        "tokens_per_s_spec": round(tps("spec"), 1),
        # Each spec run against the plain run just before it (paired: slow drifts of the machine's
        # load cancel), median over the pairs.
        "speedup": round(statistics.median(paired), 3),
        "speedup_per_repeat": [round(r, 3) for r in paired],
        "mean_acceptance_length": round(counters.mean_acceptance_length, 3),
        "per_position_acceptance": [round(x, 3) for x in counters.per_position_acceptance],
        "rollout_reward_plain": round(reward_plain, 3),
        "rollout_reward_spec": round(reward_spec, 3),
    }
    print(f"[quickstart] plain: {summary['tokens_per_s_plain']} tok/s ({tok_plain} tokens, {sec_plain:.2f}s)")
    print(f"[quickstart] spec ({args.method}, {args.mode}): {summary['tokens_per_s_spec']} tok/s "
          f"({tok_spec} tokens, {sec_spec:.2f}s), mean acceptance length {summary['mean_acceptance_length']}")
    print(f"[quickstart] rollout speedup {summary['speedup']}x on {args.rollout_size} ({dtype}; per repeat "
          f"{summary['speedup_per_repeat']})", flush=True)
    return summary


def _draft_dir(tb, method: str):
    """The testbed draft a method runs with (`eagle3+group` -> the EAGLE-3 head; `ngram`, `group`: none)."""
    base = GROUP_BASE_METHODS.get(method, method)
    return {"eagle3": tb.eagle3_dir, "draft_model": tb.draft_lm_dir, "ngram": None}[base]


def _grpo(tb, args) -> dict:
    """Part 2: veRL GRPO with and without the speculative rollout (same seeds, same data)."""
    from verl_specrollout.testing.e2e.grpo_cpu import run

    reward_fn = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testbed", "reward.py")
    spec_overrides = [
        "+actor_rollout_ref.rollout.custom.specrollout.enable=true",
        f"+actor_rollout_ref.rollout.custom.specrollout.method={args.method}",
        f"+actor_rollout_ref.rollout.custom.specrollout.max_k={args.max_k}",
        f"+actor_rollout_ref.rollout.custom.specrollout.planner.mode={args.mode}",
        f"+actor_rollout_ref.rollout.custom.specrollout.draft_sampling={args.draft_sampling}",
    ]
    draft = _draft_dir(tb, args.method)
    if draft is not None:
        spec_overrides.append(f"+actor_rollout_ref.rollout.custom.specrollout.draft_path={draft}")
    if GROUP_BASE_METHODS.get(args.method, args.method) == "eagle3" and not args.no_learner:
        spec_overrides.append("+actor_rollout_ref.rollout.custom.specrollout.learner.enable=true")
    runs = {}
    for name, extra in (("plain", []), ("spec", spec_overrides)):
        print(f"[quickstart] GRPO {name}: {args.grpo_steps} steps through veRL's {args.trainer} trainer "
              f"(log: {args.out}/{name}/train.log)", flush=True)
        run_dir = os.path.join(args.out, name)
        with _MetricsFollower(os.path.join(run_dir, "metrics.jsonl"), f"quickstart GRPO {name}", args.grpo_steps):
            res = run(args.grpo_steps, run_dir, extra, model=str(tb.target_dir),
                      data=str(tb.data_dir), reward=reward_fn, n=args.group, trainer=args.trainer)
        if res["returncode"] != 0 or not res["steps"]:
            print(f"[quickstart] GRPO {name} FAILED (exit {res['returncode']}); see {res['log']}", flush=True)
            return {"grpo_error": f"{name} run failed (exit {res['returncode']}), log {res['log']}"}
        runs[name] = res["steps"]  # each step was echoed as it landed (_MetricsFollower)

    def steady(steps, key):
        # Step 1 carries Ray/vLLM start-up and the agent-loop actor creation; leave it out.
        vals = [s[key] for s in steps[1:] if key in s] or [s[key] for s in steps if key in s]
        return sum(vals) / len(vals) if vals else math.nan

    out = {
        "grpo_steps": args.grpo_steps,
        "grpo_trainer": args.trainer,
        "rollout_seconds_plain": round(steady(runs["plain"], "timing_s/gen"), 3),
        "rollout_seconds_spec": round(steady(runs["spec"], "timing_s/gen"), 3),
        "step_seconds_plain": round(steady(runs["plain"], "timing_s/step"), 3),
        "step_seconds_spec": round(steady(runs["spec"], "timing_s/step"), 3),
        "reward_plain": round(runs["plain"][-1].get("reward_mean", math.nan), 4),
        "reward_spec": round(runs["spec"][-1].get("reward_mean", math.nan), 4),
        "grpo_mean_acceptance_length": round(steady(runs["spec"], "specrollout/mean_acceptance_length"), 3),
        "draft_version": runs["spec"][-1].get("specrollout/draft_version"),
    }
    out["e2e_speedup"] = round(out["step_seconds_plain"] / out["step_seconds_spec"], 3)
    out["rollout_speedup"] = round(out["rollout_seconds_plain"] / out["rollout_seconds_spec"], 3)
    print(f"[quickstart] GRPO rollout time plain {out['rollout_seconds_plain']}s vs spec {out['rollout_seconds_spec']}s; "
          f"step time plain {out['step_seconds_plain']}s vs spec {out['step_seconds_spec']}s; "
          f"e2e speedup {out['e2e_speedup']}x", flush=True)
    _plot_rl(args)
    return out


def _plot_rl(args) -> None:
    """<out>/rl_metrics.png from both runs' metrics logs; a failed plot is reported, never fatal."""
    from verl_specrollout.testing.rl_plot import plot, read_steps

    path = os.path.join(args.out, "rl_metrics.png")
    try:
        plot(read_steps(os.path.join(args.out, "spec")), read_steps(os.path.join(args.out, "plain")), path,
             f"veRL GRPO ({args.trainer} trainer), {args.method} {args.mode}, {args.size} testbed, CPU")
        print(f"[quickstart] RL metrics plot (acceptance length, K, draft version per step): {path}", flush=True)
    except Exception as exc:  # the numbers above are the result; the figure is a view of them
        print(f"[quickstart] no RL metrics plot: {exc!r}", flush=True)


def _step_note(rec: dict) -> str:
    data = rec.get("data", {})

    def num(key, fmt):
        v = data.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) else "-"

    note = (f"rollout {num('timing_s/gen', '.2f')}s step {num('timing_s/step', '.2f')}s "
            f"reward {num('critic/score/mean', '.3f')}")
    if "specrollout/mean_k" in data:
        note += (f" acc.len {num('specrollout/mean_acceptance_length', '.2f')} K {num('specrollout/mean_k', '.2f')} "
                 f"draft v{num('specrollout/draft_version', 'g')}")
    return note


class _MetricsFollower:
    """Echoes each veRL step as veRL's file logger writes it (one JSON line per step, unbuffered), with
    i/N and an ETA; before the first step (Ray and vLLM start-up, a minute or two) a line every 30 s.
    Follows the file instead of veRL's stdout so the subprocess, its log and grpo_cpu stay as they are."""

    POLL_S = 1.0
    HEARTBEAT_S = 30.0

    def __init__(self, path: str, label: str, total: int):
        self.path, self.label, self.total = path, label, total
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="metrics-follower", daemon=True)

    def __enter__(self):
        if os.path.exists(self.path):  # a previous run's log: grpo_cpu.run removes it too, maybe after we read it
            os.remove(self.path)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)

    def _follow(self):
        progress = Progress(self.total, self.label, every_s=0, unit="step", warmup=1)  # step 1 starts Ray, vLLM
        pos, buf, last_beat = 0, "", time.monotonic()
        while True:
            stopping = self._stop.is_set()  # read once more after the run ended, then stop
            if os.path.exists(self.path):
                with open(self.path) as f:
                    f.seek(pos)
                    buf += f.read()
                    pos = f.tell()
                *lines, buf = buf.split("\n")
                for line in lines:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    progress.set(int(rec.get("step", progress.done + 1)), note=_step_note(rec))
            if stopping:
                return
            if progress.done == 0 and time.monotonic() - last_beat >= self.HEARTBEAT_S:
                last_beat = time.monotonic()
                progress.print("veRL starting (Ray, vLLM, FSDP workers)")
            self._stop.wait(self.POLL_S)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
