"""Does online draft learning keep acceptance up while the target drifts the way RL moves it?

    python -m benchmarks.draft_drift [--testbed tiny] [--out results/draft_drift.json]

Setup (CPU, ~10 min on 2 cores): the project testbed
(``build_testbed("tiny")``: 2.7M-parameter Llama target trained on the GSM8K-shaped task, its
EAGLE-3 head, word-piece tokenizer).  Drift: each step runs supervised fine-tuning steps of the
target on a *shifted task* (same questions, solutions in another format, ``testing/testbed/drift.py``),
saves the drifted target and pushes its weights into the running vLLM engine in place (veRL's
weight sync).  Per step, inside ONE engine, vLLM's own spec-decode counters measure the mean
acceptance length on held-out test prompts of

* the frozen draft (the testbed's initial EAGLE-3 head, never updated), and
* the online draft: rollouts of the current target (drawn with the live online draft, i.e. real
  speculative rollouts) -> capture hooks (``capture/hooks.py``) on a forward of the drifted target
  over those rollouts -> learner (``SpecLearner`` buffer + trainer, in-process) ->
  publish a versioned checkpoint -> live reload into the running engine (``vllm_adapter/draft_reload.py``).

Both drafts are loaded with the same live-reload path, interleaved in the same engine.
Sampling: ``--temperature`` (default 1.0; vLLM-CPU's T>0 rejection sampler is only
correct with this project's expand-kernel fix, which the CPU platform plugin installs).

Overhead, honestly split:

* ``overhead_fraction`` (critical path) = (capture + shipping + reload seconds) / (rollout
  generation + target update seconds).  Capture is the *extra* cost of the hooks on a forward the
  RL step runs anyway (old log-probs): forward-with-hooks minus the same forward without hooks,
  both timed here per micro-batch (min over ``--timing-repeats``); the plain forward is counted in the target update.  Shipping =
  serialising the samples (``pickle``, what ``ray.put`` does); deserialising and the buffer insert
  happen in the learner.  Reload = live reload into the engine.  This is what a GPU deployment pays: the learner trains and publishes in its own actor.
* ``overhead_fraction_separate_forward``: same, but charging the whole capture forward.
* ``learner_train_fraction``: learner ingest + training + publish seconds over the same denominator.  On
  this 2-core CPU the learner is run in-process (serially), so it competes for the same cores.

CPU-only detail: the engine keeps plain linear weights (cpu_platform/plain_linear_weights.py) so the
target weights can be synced in place.

Writes JSON (with provenance) and a PNG: both drafts' acceptance length and online / frozen per drift
step. Flags: benchmarks/common.py (testbed only: no --target); default the tiny testbed in float32,
the setting of the results in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import tempfile
import time

import torch

from benchmarks.common import ModelPair, add_common_args, engine_settings, out_path, plot_path, provenance
from verl_specrollout.progress import Progress


def _target_sync_fn(self, target_dir):
    """Inside the vLLM worker: load the drifted target's weights in place (veRL's weight sync)."""
    from safetensors.torch import load_file

    sd = load_file(os.path.join(target_dir, "model.safetensors"))
    model = self.model_runner.get_model()
    with torch.no_grad():
        model.load_weights(iter(sd.items()))
    return True


# ----------------------------------------------------------------------------- setups

class TestbedSetup:
    """Testbed target + EAGLE-3 head; drift = SFT on the shifted task (testing/testbed/drift.py)."""

    name = "testbed"

    def __init__(self, args):
        from transformers import AutoTokenizer

        from verl_specrollout.testing.testbed import build_testbed
        from verl_specrollout.testing.testbed.measure import task_prompts

        self.args = args
        self.tb = build_testbed(args.testbed)
        self.tok = AutoTokenizer.from_pretrained(self.tb.tokenizer_dir)
        self.target0, self.frozen_dir, self.aux = self.tb.target_dir, self.tb.eagle3_dir, self.tb.aux_layer_ids
        self.eval_prompts = [p for p, _ in task_prompts(self.tb, args.prompts, "test")]
        self._train = [p for p, _ in task_prompts(self.tb, args.rollout_prompts * (args.steps + 1), "train")]
        self.llm_kwargs = dict(max_model_len=512, max_num_seqs=64, dtype=args.dtype)
        self.llm_kwargs.update(engine_settings(args))
        self.sampling = dict(max_tokens=args.max_tokens, temperature=args.temperature)
        self._sft_step = 0

    def train_prompts(self, step):
        n = self.args.rollout_prompts
        return self._train[(step - 1) * n: step * n]

    def sft(self, policy, opt, steps, seed):
        """``steps`` supervised steps on shifted-task examples (loss on response tokens)."""
        from verl_specrollout.testing.testbed.build import encode_examples, make_batch
        from verl_specrollout.testing.testbed.drift import make_shifted_examples

        bs = self.args.sft_batch
        enc = encode_examples(self.tok, make_shifted_examples(steps * bs, seed=seed, style=self.args.drift_style))
        policy.train()
        loss = None
        for i in range(steps):
            ids, am, resp = make_batch(enc, list(range(i * bs, (i + 1) * bs)), self.tok.pad_token_id)
            labels = ids.masked_fill(am == 0, -100)
            # loss on response tokens: labels at positions whose previous position is a response slot
            keep = torch.zeros_like(am, dtype=torch.bool)
            keep[:, 1:] = resp[:, :-1] > 0
            labels = labels.masked_fill(~keep, -100)
            loss = policy(input_ids=ids, attention_mask=am, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            opt.step()
        policy.eval()
        return float(loss.detach()) if loss is not None else None

    def describe(self, texts):
        """Fraction of sampled held-out responses already in the shifted format."""
        shifted = sum(t.strip().startswith("step") for t in texts) / max(1, len(texts))
        return {"shifted_format_fraction": round(shifted, 3)}


# ----------------------------------------------------------------------------- measurement

def _generate(llm, prompts, sampling):
    from vllm import SamplingParams, TokensPrompt

    from verl_specrollout.vllm_adapter.spec_counters import read_counters

    c0 = read_counters(llm)
    t0 = time.perf_counter()
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], SamplingParams(**sampling),
                        use_tqdm=False)
    dt = time.perf_counter() - t0
    d = read_counters(llm) - c0
    rollouts = [(list(p), list(o.outputs[0].token_ids)) for p, o in zip(prompts, outs)]
    texts = [o.outputs[0].text or "" for o in outs]
    return d, dt, rollouts, texts


def _load_online(reloader, learner):
    """Live-reload the learner's newest published version (frozen and online arms share one
    engine, so we load by explicit version rather than ``maybe_reload``'s newer-than check)."""
    from verl_specrollout.learner.publisher import read_latest

    version, path = read_latest(learner.publisher.publish_dir)
    if reloader.load(path, version) != version:
        raise RuntimeError(f"online draft v{version} failed to load: {reloader.last_result}")


def _expand_fix_active():
    """Whether this project's vLLM-CPU expand-kernel fix is what the rejection sampler calls."""
    try:
        from vllm.utils import cpu_triton_utils

        return bool(getattr(cpu_triton_utils._expand_kernel_impl, "_specrollout_fix", False))
    except Exception:
        return None


def _packed(rollouts):
    seqs = [p + r for p, r in rollouts]
    ids = torch.tensor([t for s in seqs for t in s])[None]
    pos = torch.cat([torch.arange(len(s)) for s in seqs])[None]
    return ids, pos


def _plain_forward(policy, rollouts):
    """The forward an RL step runs anyway over its rollouts (old log-probs), without hooks."""
    ids, pos = _packed(rollouts)
    with torch.no_grad():
        policy(input_ids=ids, position_ids=pos, use_cache=False, logits_to_keep=1)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(ap, "draft_drift", own_pair=False, testbed="tiny", dtype="float32", max_k=3, max_tokens=160)
    ap.add_argument("--drift-style", default="steps", help="shifted task format (testing/testbed/drift.py STYLES)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--steps", type=int, default=4, help="drift steps")
    ap.add_argument("--sft-steps", type=int, default=16, help="target fine-tuning steps per drift step")
    ap.add_argument("--sft-batch", type=int, default=16)
    ap.add_argument("--sft-lr", type=float, default=1e-3, help="target drift AdamW lr (lower = gentler drift)")
    ap.add_argument("--steps-per-rollout", type=int, default=80, help="learner steps per drift step")
    ap.add_argument("--lr", type=float, default=3e-3, help="learner AdamW lr")
    ap.add_argument("--learner-batch", type=int, default=16)
    ap.add_argument("--unroll", type=int, default=3, help="learner EAGLE-3 unroll steps")
    ap.add_argument("--prompts", type=int, default=64, help="held-out eval prompts per arm")
    ap.add_argument("--rollout-prompts", type=int, default=128, help="rollout prompts per drift step")
    ap.add_argument("--micro-batch", type=int, default=32, help="sequences per log-prob / capture forward")
    ap.add_argument("--timing-repeats", type=int, default=2, help="forward timings: min over repeats")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--capture-budget-mb", type=float, default=None,
                    help="per-step capture budget (learner.capture_budget_mb, one rank); default: keep everything")
    return ap.parse_args(argv)


COST_KEYS = ("rollout_s", "target_sft_s", "target_sync_s", "logprob_forward_s", "capture_forward_s",
             "capture_extra_s", "ship_s", "reload_s", "learner_ingest_s", "learner_train_s", "learner_publish_s")


class DriftRun:
    """One engine, one drifting target, a frozen and an online draft measured side by side."""

    def __init__(self, args):
        from transformers import AutoModelForCausalLM

        from verl_specrollout.config import SpecRolloutConfig
        from verl_specrollout.learner.actor import SpecLearner
        from verl_specrollout.cpu_platform import plain_linear_weights
        from verl_specrollout.vllm_adapter.draft_reload import DraftReloader
        from verl_specrollout.vllm_adapter.offline_engine import make_llm

        plain_linear_weights.install()  # plain linear weights: in-place target sync on vLLM-CPU (CPU only)
        self.args = args
        self.work = args.workdir or tempfile.mkdtemp(prefix="draft_drift-")
        self.setup = setup = TestbedSetup(args)
        self.learner = SpecLearner(
            {"publish_dir": os.path.join(self.work, "pub"), "lr": args.lr, "buffer_bytes": 256 << 20,
             "steps_per_rollout": args.steps_per_rollout},
            setup.target0, setup.aux, bootstrap_dir=setup.frozen_dir,
            batch_size=args.learner_batch, num_steps=args.unroll, save_state_on_publish=False)
        spec = SpecRolloutConfig.from_dict({"enable": True, "method": "eagle3", "draft_path": setup.frozen_dir,
                                            "max_k": args.max_k, "planner": {"mode": "static"}})
        self.llm = make_llm(setup.target0, spec, gpu_memory_utilization=0.08, **setup.llm_kwargs)
        self.reloader = DraftReloader.for_llm(self.llm, self.learner.publisher.publish_dir, initial_version=0)
        self.expand_fix = _expand_fix_active()
        if args.temperature > 0 and not self.expand_fix:
            print("[drift] WARNING: vLLM-CPU expand-kernel fix not active: T>0 acceptance is not trustworthy")
        self.policy = AutoModelForCausalLM.from_pretrained(setup.target0).float().eval()
        self.opt = torch.optim.AdamW(self.policy.parameters(), lr=args.sft_lr, betas=(0.9, 0.98))
        self.cost = {k: 0.0 for k in COST_KEYS}

    # -- one drift step, in the order an RL step runs it
    def drift_target(self, step: int, c: dict) -> float:
        """Supervised steps on the shifted task, save, sync into the engine (veRL's weight sync)."""
        t0 = time.perf_counter()
        loss = self.setup.sft(self.policy, self.opt, self.args.sft_steps, seed=100 + step)
        c["target_sft_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        tdir = self.target_dir(step)
        self.policy.save_pretrained(tdir, safe_serialization=True)
        self.llm.collective_rpc(_target_sync_fn, args=(tdir,))
        c["target_sync_s"] = time.perf_counter() - t0
        print(f"[drift] step {step}: target sft loss {loss:.3f}", flush=True)
        return loss

    def target_dir(self, step: int) -> str:
        return os.path.join(self.work, f"target_{step}")

    def reload_online(self, c: dict) -> None:
        t0 = time.perf_counter()
        _load_online(self.reloader, self.learner)
        c["reload_s"] += time.perf_counter() - t0

    def capture(self, rollouts, step: int, c: dict) -> list:
        """The RL step's own forward over its rollouts (old log-probs, per micro-batch), then the same
        micro-batch with the capture hooks armed: the difference is the hook cost."""
        from verl_specrollout.testing.testbed.toy import capture_samples

        samples, mb = [], self.args.micro_batch
        for i in range(0, len(rollouts), mb):
            chunk = rollouts[i:i + mb]
            t_plain, t_hook = [], []
            for _ in range(self.args.timing_repeats):  # min over repeats: robust to other jobs' load
                t0 = time.perf_counter()
                _plain_forward(self.policy, chunk)
                t1 = time.perf_counter()
                got = capture_samples(self.policy, self.setup.aux, chunk, policy_step=step)
                t_plain.append(t1 - t0)
                t_hook.append(time.perf_counter() - t1)
            samples += got
            c["logprob_forward_s"] += min(t_plain)
            c["capture_forward_s"] += min(t_hook)
        c["capture_extra_s"] = c["capture_forward_s"] - c["logprob_forward_s"]  # may be < 0 (noise)
        return self.apply_budget(samples, step)

    def apply_budget(self, samples: list, step: int) -> list:
        """The product's per-step capture budget (capture/budget.py): same selection rule, applied
        to the step's samples as one data-parallel rank would."""
        if self.args.capture_budget_mb is None:
            return samples
        from verl_specrollout.capture.budget import MIB, StepBudget, bytes_per_token
        from verl_specrollout.capture.samples import cut_sample, sample_tokens

        cfg = self.policy.config
        budget = StepBudget(int(self.args.capture_budget_mb * MIB), bytes_per_token(cfg.hidden_size, len(self.setup.aux)),
                            policy_step=step)
        picks = budget.plan([(0, 0, sample_tokens(x)) for x in samples], [True] * len(samples))
        cut = [(pk, cut_sample(x, pk.start, pk.take)) for pk, x in zip(picks, samples) if pk is not None]
        budget.commit([(pk, x) for pk, x in cut if x is not None])
        kept, counts = budget.finish()
        self.capture_counts = counts
        return kept

    def ship_and_learn(self, samples, step: int, c: dict) -> tuple:
        """Shipping on the critical path = serialising the samples (what ray.put does); the learner
        (its own actor in a deployment; in-process and serial here) ingests, trains, publishes."""
        t0 = time.perf_counter()
        blob = pickle.dumps(samples, protocol=5)
        c["ship_s"] = time.perf_counter() - t0
        ship_mb = len(blob) / 2**20
        t0 = time.perf_counter()
        self.learner.add_batch(pickle.loads(blob), step)
        c["learner_ingest_s"] = time.perf_counter() - t0
        del blob
        t0 = time.perf_counter()
        self.learner.refresh_shared(self.target_dir(step))
        train = self.learner.train(self.args.steps_per_rollout)
        c["learner_train_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.learner.publish()
        c["learner_publish_s"] = time.perf_counter() - t0
        return train, ship_mb

    def run_step(self, step: int) -> dict:
        c = {k: 0.0 for k in COST_KEYS}
        sft_loss = self.drift_target(step, c) if step > 0 else None
        self.reloader.load(self.setup.frozen_dir, 10_000 + step)  # frozen draft on held-out prompts
        d_frozen, _, _, texts = _generate(self.llm, self.setup.eval_prompts, self.setup.sampling)
        if step > 0:  # a real rollout: current target, current online draft
            self.reload_online(c)
            d_roll, c["rollout_s"], rollouts, _ = _generate(self.llm, self.setup.train_prompts(step),
                                                            self.setup.sampling)
            train, ship_mb = self.ship_and_learn(self.capture(rollouts, step, c), step, c)
            self.reload_online(c)
        else:
            d_roll, rollouts, train, ship_mb = None, [], {}, 0.0
            self.learner.publish()  # v1 = the bootstrap draft
            _load_online(self.reloader, self.learner)
        assert self.reloader.current_draft_version == self.learner.version
        d_online, _, _, _ = _generate(self.llm, self.setup.eval_prompts, self.setup.sampling)
        for k in COST_KEYS:
            self.cost[k] += c[k]
        row = self.step_row(step, d_frozen, d_online, d_roll, rollouts, sft_loss, train, ship_mb, texts, c)
        print(f"[drift] step {step}: frozen {row['frozen_acceptance_length']:.3f} online "
              f"{row['online_acceptance_length']:.3f} (x{row['online_over_frozen']}) "
              f"rollout {row['rollout_acceptance_length']} top1 {row['learner_top1_heldout']} "
              f"costs { {k: round(v, 2) for k, v in c.items() if v} } ship {ship_mb:.1f} MB", flush=True)
        return row

    def step_row(self, step, d_frozen, d_online, d_roll, rollouts, sft_loss, train, ship_mb, texts, c) -> dict:
        st, learner = self.learner.stats(), self.learner
        return {"step": step, "frozen_acceptance_length": round(d_frozen.mean_acceptance_length, 4),
                "online_acceptance_length": round(d_online.mean_acceptance_length, 4),
                "online_over_frozen": round(d_online.mean_acceptance_length
                                            / max(d_frozen.mean_acceptance_length, 1e-9), 3),
                "frozen_per_position": [round(x, 3) for x in d_frozen.per_position_acceptance],
                "online_per_position": [round(x, 3) for x in d_online.per_position_acceptance],
                "frozen_num_drafts": d_frozen.num_drafts, "online_num_drafts": d_online.num_drafts,
                "rollout_acceptance_length": round(d_roll.mean_acceptance_length, 4) if d_roll else None,
                "rollout_tokens": sum(len(r) for _, r in rollouts),
                "target_sft_loss": sft_loss, "draft_version": learner.version,
                "learner_loss": train.get("loss"), "learner_top1_heldout": st.get("top1_agreement"),
                "learner_lag": learner.lag(step), "shipped_mb": round(ship_mb, 2),
                "buffer_samples": st.get("buffer_samples"), "buffer_dropped": st.get("buffer_dropped"),
                "capture_kept_tokens": getattr(self, "capture_counts", {}).get("kept_tokens"),
                "capture_dropped_tokens": getattr(self, "capture_counts", {}).get("dropped_tokens"),
                **self.setup.describe(texts), **{f"{k}": round(v, 3) for k, v in c.items()}}


def summarise(run: DriftRun, steps: list, wall_s: float, load_start) -> dict:
    cost, args = run.cost, run.args
    denom = cost["rollout_s"] + cost["target_sft_s"] + cost["target_sync_s"] + cost["logprob_forward_s"]
    crit = max(0.0, cost["capture_extra_s"]) + cost["ship_s"] + cost["reload_s"]
    crit_sep = cost["capture_forward_s"] + cost["ship_s"] + cost["reload_s"]
    learn = cost["learner_ingest_s"] + cost["learner_train_s"] + cost["learner_publish_s"]
    after = steps[1:] or steps
    return {
        "steps": steps,
        "overhead_fraction": round(crit / denom, 4) if denom else None,
        "overhead_fraction_separate_forward": round(crit_sep / denom, 4) if denom else None,
        "learner_train_fraction": round(learn / denom, 4) if denom else None,
        "final_online_over_frozen": steps[-1]["online_over_frozen"],
        "mean_online_over_frozen_after_drift": round(sum(r["online_over_frozen"] for r in after) / len(after), 3),
        "target": "testbed", "temperature": args.temperature, "expand_kernel_fix": run.expand_fix,
        "config": vars(args), "cost_seconds": {k: round(v, 3) for k, v in cost.items()},
        "critical_path_seconds": round(crit, 3), "critical_path_denominator_seconds": round(denom, 3),
        "wall_seconds": round(wall_s, 1),
        "host": {"cpus": os.cpu_count(), "loadavg_start": [round(x, 2) for x in load_start],
                 "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "notes": ("acceptance = vLLM's spec_decode counters (1 + accepted/drafts) on held-out prompts, frozen "
                  "and online drafts interleaved in one vLLM-CPU engine whose target weights are synced in "
                  "place after each drift step. overhead_fraction = (hook cost on the log-prob forward + "
                  "sample serialisation/buffer insert + live reload) / (rollout generation + target SFT + "
                  "target weight sync + log-prob forward): the critical path of a deployment whose learner "
                  "trains in its own actor. learner_train_fraction = learner train + publish over the same "
                  "denominator; here the learner runs in-process on the same 2 CPU cores."),
    }


def plot(steps: list, args, path: str) -> None:
    """Both drafts' acceptance length per drift step, and the online draft's over the frozen one's."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        xs = [r["step"] for r in steps]
        fig, (ax, ratio) = plt.subplots(1, 2, figsize=(9.5, 3.4))
        ax.plot(xs, [r["frozen_acceptance_length"] for r in steps], "o-", label="frozen draft")
        ax.plot(xs, [r["online_acceptance_length"] for r in steps], "s-", label="online-learned draft")
        ax.set_ylabel("mean acceptance length (vLLM)")
        ax.set_ylim(1.0, args.max_k + 1.0)
        ax.legend()
        ratio.plot(xs, [r["online_over_frozen"] for r in steps], "s-", color="tab:green")
        ratio.axhline(1.0, color="k", lw=1)
        ratio.set_ylabel("online / frozen acceptance length")
        for a in (ax, ratio):
            a.set_xlabel("target drift step")
            a.set_xticks(xs)
        fig.suptitle(f"EAGLE-3 under drift ({args.testbed} testbed, T={args.temperature:g}, K={args.max_k})",
                     fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
    except Exception as exc:  # plotting is optional
        print(f"[drift] no plot: {exc!r}")


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("SPECROLLOUT_PLATFORM", "cpu")
    torch.set_num_threads(args.threads)
    out = out_path(args)
    t_start, load_start = time.time(), os.getloadavg()
    run = DriftRun(args)
    progress = Progress(args.steps + 1, "draft_drift", unit="drift step")
    steps = []
    for step in range(args.steps + 1):
        steps.append(run.run_step(step))
        progress.update(note=f"online/frozen {steps[-1]['online_over_frozen']}")
    result = summarise(run, steps, time.time() - t_start, load_start)
    tb = run.setup.tb
    result["provenance"] = provenance(args, ModelPair(tb.target_dir, {"eagle3": tb.eagle3_dir}, None, tb))
    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    png = plot_path(args)
    if png:
        plot(steps, args, png)
    print(json.dumps({k: result[k] for k in ("overhead_fraction", "overhead_fraction_separate_forward",
                                             "learner_train_fraction", "final_online_over_frozen",
                                             "wall_seconds")}))
    print(f"[draft_drift] wrote {out}" + (f" and {png}" if png else ""), flush=True)
    return result


if __name__ == "__main__":
    main()
