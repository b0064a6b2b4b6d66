"""Fault matrix: the real learner actor (Ray) and one real in-process vLLM-CPU engine on the toy
target, shared by the module.  For each fault: rollouts go on with the last good draft (judged by
vLLM's acceptance counters), every wait has a timeout, nothing the learner acknowledged is lost,
and the fault is said in one clear log line.

Faults are injected inside the learner's own process with ``actor.__ray_call__`` (runs a function
on the live actor instance), so the product carries no test-only switches.

A planted learner state file (pickle payload) is covered by
tests/unit/test_learner_state.py::test_planted_pickle_never_runs_and_is_refused_clearly.
"""
import glob
import os
import shutil
import sys
import time
import types

import pytest
import torch

pytestmark = pytest.mark.integration

NAMESPACE = "specrollout_fault"
WAIT_S = 180  # upper bound for any one Ray answer: actor start-up on a loaded 2-core box


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    # Logical CPUs: a killed learner's slot may be freed a little after its successor asks for one.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    # The fault injectors below run inside the learner's process: ship them by value (the
    # workers cannot import this test module).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from transformers import AutoConfig, AutoModelForCausalLM

    from verl_specrollout.draft.eagle3 import Eagle3Config, Eagle3Draft, load_vllm_checkpoint, save_vllm_checkpoint
    from verl_specrollout.testing.testbed.toy import TOY_AUX, capture_samples, get_toy, greedy_rollouts, toy_prompts

    torch.set_num_threads(2)
    toy = get_toy()  # cached tiny target + trained EAGLE-3 head
    root = tmp_path_factory.mktemp("fault")
    good = load_vllm_checkpoint(toy["draft"])
    torch.manual_seed(7)
    rand_dir = save_vllm_checkpoint(Eagle3Draft(Eagle3Config(**good.config.__dict__)), str(root / "random"),
                                    AutoConfig.from_pretrained(toy["target"]))
    m = AutoModelForCausalLM.from_pretrained(toy["target"]).eval()
    samples = capture_samples(m, TOY_AUX, greedy_rollouts(m, toy_prompts(8, seed=3), 16), policy_step=3)
    return {"target": toy["target"], "draft": toy["draft"], "random": rand_dir, "aux": TOY_AUX,
            "samples": samples}


@pytest.fixture(scope="module")
def engine(toy):
    from verl_specrollout.config import SpecRolloutConfig
    from verl_specrollout.vllm_adapter.offline_engine import make_llm

    spec = SpecRolloutConfig.from_dict({"enable": True, "method": "eagle3", "draft_path": toy["random"],
                                        "max_k": 3, "planner": {"mode": "static"}})
    return make_llm(toy["target"], spec, skip_tokenizer_init=True, max_model_len=256, gpu_memory_utilization=0.08)


# ----------------------------------------------------------------------------- helpers

def acceptance(llm):
    """Mean acceptance length of one greedy batch, from vLLM's own counters; rollouts complete."""
    from vllm import SamplingParams, TokensPrompt

    from verl_specrollout.testing.testbed.toy import toy_prompts
    from verl_specrollout.vllm_adapter.spec_counters import read_counters

    c0 = read_counters(llm)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in toy_prompts(8, seed=99)],
                        SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True), use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == 32 for o in outs)
    return (read_counters(llm) - c0).mean_acceptance_length


def learner_cfg(pub, **extra):
    return {"enable": True, "placement": "cpu", "publish_dir": str(pub), "lr": 1e-4, "buffer_bytes": 8 << 20,
            "actor_namespace": NAMESPACE, **extra}


def start_learner(toy, cfg, name=None):
    """This job's learner (found by name, else created), bootstrapped from the trained toy head."""
    from verl_specrollout.learner.remote import get_or_create_learner

    return get_or_create_learner(cfg, toy["target"], toy["aux"], name=name, namespace=NAMESPACE, batch_size=4,
                                 num_steps=1, heldout_every=1000, bootstrap_dir=toy["draft"])


def get(ref, timeout=WAIT_S):
    import ray

    return ray.get(ref, timeout=timeout)


def reloader_on(engine, toy, pub, start_over=False):
    """A rollout server's reloader starting fresh (no version yet), with the engine's draft_path
    (the random head) as its bootstrap (v0), as veRL's server builds it; ``start_over`` first puts
    the engine back on that draft so the next reload is visibly a change."""
    from verl_specrollout.vllm_adapter.draft_reload import DraftReloader

    rel = DraftReloader.for_llm(engine, str(pub), initial_version=None, bootstrap_dir=toy["random"])
    if start_over:
        assert rel.load(toy["random"], 0) == 0
    return rel


def learner_log_lines(text, wait_s=10.0):
    """Lines of the Ray workers' logs (the learner's log) that contain ``text``."""
    import ray

    logs = ray._private.worker.global_worker.node.get_logs_dir_path()
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for path in glob.glob(os.path.join(logs, "worker-*")):
            with open(path, errors="replace") as f:
                found += [line.rstrip() for line in f if text in line]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _slow_train_steps(learner, seconds):
    """Runs in the learner's process: every optimizer step now takes ``seconds`` longer."""
    import time as _time

    real = learner.trainer.train_step

    def slow(samples):
        _time.sleep(seconds)
        return real(samples)

    learner.trainer.train_step = slow


def _disk_full(learner, on):
    """Runs in the learner's process: every safetensors write fails with ENOSPC (or works again)."""
    import errno as _errno

    import safetensors.torch as st

    if on:
        learner._real_save_file = st.save_file

        def full(*args, **kwargs):
            raise OSError(_errno.ENOSPC, "No space left on device")

        st.save_file = full
    else:
        st.save_file = learner._real_save_file


def _hold_thread(learner, seconds):
    """Runs in the learner's process, in its default concurrency group: a busy learner."""
    import time as _time

    _time.sleep(seconds)


def _sleep(seconds):
    import time as _time

    _time.sleep(seconds)


def never_backwards(versions):
    return all(b >= a for a, b in zip(versions, versions[1:]))


# ----------------------------------------------------------------------------- 1. killed mid-train

def test_learner_killed_mid_train_resumes_and_rollouts_keep_the_last_good_draft(ray_local, toy, engine,
                                                                                tmp_path):
    from verl_specrollout.learner.publisher import read_latest

    pub = tmp_path / "pub"
    a = start_learner(toy, learner_cfg(pub, actor_name="fault_kill"))
    assert get(a.publish.remote()) == 1  # v1 = the trained toy head; state saved with it
    rel = reloader_on(engine, toy, pub, start_over=True)
    a_rand = acceptance(engine)
    assert rel.maybe_reload() == 1
    a_v1 = acceptance(engine)
    assert a_v1 > 1.5 and a_v1 > a_rand + 0.4, (a_rand, a_v1)  # the reload really changes the draft
    get(a.add_batch.remote(toy["samples"], 3))
    assert get(a.train.remote(2))["trained"] == 2
    assert get(a.publish.remote()) == 2  # acknowledged: v2, draft step 2, data up to policy step 3
    live = [rel.maybe_reload()]
    a_v2 = acceptance(engine)

    buffered_before = get(a.stats.remote(evaluate=False))["buffer_samples"]
    # A slow train call (only this process is slowed: a restarted learner runs at normal speed).
    get(a.__ray_call__.remote(_slow_train_steps, 0.5))
    train = a.train.remote(50)
    deadline = time.monotonic() + WAIT_S
    while get(a.stats.remote(evaluate=False))["draft_step"] < 4:  # stats takes no lock: answers mid-train
        assert time.monotonic() < deadline, "the slow train call never started"
        time.sleep(0.2)
    ready, _ = ray_local.wait([train], timeout=0)
    assert not ready  # killed mid-train
    ray_local.kill(a, no_restart=False)  # a crash: Ray restarts the actor behind the same handle

    # Rollouts go on with v2 while the learner is down: no reload, no failure, same acceptance.
    live.append(rel.maybe_reload())
    assert abs(acceptance(engine) - a_v2) < 1e-6 and rel.failures == 0 and read_latest(str(pub))[0] == 2

    deadline = time.monotonic() + WAIT_S
    while True:  # calls sent before the kill lands still reach the old process
        st = get(a.stats.remote(evaluate=False))
        if st["resumed"] or time.monotonic() > deadline:
            break
        time.sleep(1)
    # Everything acknowledged is back; the steps of the interrupted call were never acknowledged.
    assert st["resumed"] and st["state_error"] is None
    assert (st["version"], st["draft_step"], st["published_up_to_policy_step"]) == (2, 2, 3)
    # Acknowledged batches are journaled (learner/journal.py): the restarted learner's replay
    # buffer holds them again, so the interrupted call, retried there (max_task_retries), trains.
    assert st["buffer_samples"] == buffered_before > 0, (st, buffered_before)
    assert get(train)["trained"] == 50
    lines = learner_log_lines(f"resumed from {pub}")
    assert len(lines) == 1 and "version 2, draft step 2" in lines[0], lines

    get(a.add_batch.remote(toy["samples"], 4))
    assert get(a.train.remote(1))["trained"] == 1
    assert get(a.publish.remote()) == 3  # the counter goes on
    live.append(rel.maybe_reload())
    assert live == [2, 2, 3] and never_backwards(live) and rel.failures == 0
    assert acceptance(engine) > 1.5
    ray_local.kill(a, no_restart=True)


# ----------------------------------------------------------------------------- 2. learner slower than rollouts

def test_slow_learner_backlog_is_bounded_oldest_dropped_and_counted(ray_local, toy, tmp_path, caplog):
    from verl_specrollout.capture.shipper import SampleShipper
    from verl_specrollout.learner.remote import MAX_CONCURRENCY, TrainCalls

    pub = tmp_path / "pub"
    a = start_learner(toy, learner_cfg(pub, actor_name="fault_slow"))
    assert get(a.metrics.remote())["version"] == 0  # started
    # The learner is busy for a while: every default-group thread (add_batch, train) is taken.
    busy_s = 8
    busy = [a.__ray_call__.remote(_hold_thread, busy_s) for _ in range(MAX_CONCURRENCY)]
    time.sleep(1)
    ship = SampleShipper(a, max_in_flight=2)
    calls = TrainCalls(a)
    batch = toy["samples"][:2]
    sent_refs, rounds = [], 6
    with caplog.at_level("WARNING"):
        for step in range(1, rounds + 1):  # rollout steps come faster than the learner answers
            t0 = time.perf_counter()
            assert ship.ship(batch, policy_step=step)
            sent_refs.append(ship._in_flight[-1])
            calls.fire(1, list(ship._in_flight))
            assert time.perf_counter() - t0 < 1.0  # neither shipping nor the train call waits on the learner
    # Backlog bounded: 2 add_batch calls and 1 train call outstanding; the rest dropped / skipped, counted.
    assert ship.stats() == {"sent": rounds, "dropped": rounds - 2, "in_flight": 2, "sent_samples": 2 * rounds,
                            "dropped_samples": 2 * (rounds - 2)}
    assert calls.skipped == rounds - 1 and calls.errors == 0
    assert len([r for r in caplog.records if "dropped the oldest" in r.getMessage()]) == 3  # drops 1, 2, 4
    # The trainer's metrics still answer at once (control group), with the skipped calls counted.
    t0 = time.perf_counter()
    m = get(a.metrics.remote(rounds), timeout=10)
    assert time.perf_counter() - t0 < 3 and m["version"] == 0
    # The skipped-call reports are fire-and-forget on the same threaded group: the newest may still be
    # in flight when metrics answers, but the count only grows and reaches every skipped call.
    deadline = time.monotonic() + 10
    while m["train_calls_skipped"] < rounds - 1 and time.monotonic() < deadline:
        time.sleep(0.1)
        m = get(a.metrics.remote(rounds), timeout=10)
    assert m["train_calls_skipped"] == rounds - 1

    get(busy)
    ship.flush(timeout=WAIT_S)
    assert ship.stats()["in_flight"] == 0
    # Nothing the learner acknowledged is lost: the two newest batches landed, the dropped ones
    # were cancelled before they ran (never acknowledged).
    landed = [get(r) for r in sent_refs[-2:]]
    assert landed == [2, 2]
    for r in sent_refs[:-2]:
        with pytest.raises(ray_local.exceptions.TaskCancelledError):
            get(r)
    st = get(a.stats.remote(evaluate=False))
    assert st["batches"] == 2 and st["buffer_samples"] == 4 and st["data_policy_step"] == rounds
    # The one train call let through ran once the learner was free (its own batch was dropped, so
    # whether the newer batches had landed by then is a race); the next round's call goes through.
    first = get(calls.pending)
    assert "publish_error" not in first
    assert calls.fire(1, []) and calls.skipped == rounds - 1
    out = get(calls.pending)
    version = 1 + int(first["published"])
    assert out["published"] and out["version"] == version

    # A train call whose captured batch never arrives gives up after its wait timeout.
    never = ray_local.remote(num_cpus=0)(_sleep).remote(60)
    t0 = time.perf_counter()
    out = get(a.train_and_publish.remote(1, [never], 3), timeout=30)
    assert out["published"] and out["version"] == version + 1 and time.perf_counter() - t0 < 20
    ray_local.cancel(never, force=True)
    ray_local.kill(a, no_restart=True)


# ----------------------------------------------------------------------------- 3. disk full on publish

def test_publish_fails_on_a_full_disk_latest_and_rollouts_keep_the_last_good_version(ray_local, toy, engine,
                                                                                     tmp_path):
    from verl_specrollout.learner.publisher import read_latest

    pub = tmp_path / "pub"
    a = start_learner(toy, learner_cfg(pub, actor_name="fault_disk_full"))
    assert get(a.publish.remote()) == 1
    rel = reloader_on(engine, toy, pub)
    assert rel.maybe_reload() == 1
    a_v1 = acceptance(engine)
    get(a.add_batch.remote(toy["samples"], 3))

    get(a.__ray_call__.remote(_disk_full, True))
    for _ in range(3):  # the learner keeps training; each publish fails, LATEST stays v1
        out = get(a.train_and_publish.remote(1))
        assert out["trained"] == 1 and not out["published"] and "No space left" in out["publish_error"]
        assert rel.maybe_reload() == 1 and read_latest(str(pub))[0] == 1
    assert abs(acceptance(engine) - a_v1) < 1e-6 and rel.failures == 0
    m = get(a.metrics.remote())
    assert m["publish_failures"] == 3 and m["version"] == 1 and m["draft_step"] == 3
    assert not [n for n in os.listdir(pub) if n.startswith(".tmp")]  # no half-written leftovers
    errors = learner_log_lines(f"to {pub} failed")
    assert len(errors) == 1 and "LATEST still names v1" in errors[0] and "No space left" in errors[0], errors

    get(a.__ray_call__.remote(_disk_full, False))  # space freed
    out = get(a.train_and_publish.remote(1))
    assert out["published"] and out["version"] == 2  # the number the failed publishes never used
    assert read_latest(str(pub))[0] == 2 and rel.maybe_reload() == 2 and rel.failures == 0
    assert acceptance(engine) > 1.5
    assert len(learner_log_lines("publishing works again (v2, after 3 failed publishes)")) == 1
    ray_local.kill(a, no_restart=True)


# ----------------------------------------------------------------------------- 4. corrupt checkpoints

def _nan_checkpoint(version_dir):
    from safetensors.torch import load_file, save_file

    path = os.path.join(version_dir, "model.safetensors")
    sd = load_file(path)
    name = next(k for k, v in sd.items() if v.is_floating_point() and "embed" not in k)
    sd[name] = torch.full_like(sd[name], float("nan"))
    save_file(sd, path, metadata={"format": "pt"})


def _truncate(version_dir):
    path = os.path.join(version_dir, "model.safetensors")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def test_corrupt_checkpoints_are_refused_once_and_the_live_draft_stays(ray_local, toy, engine, tmp_path, caplog):
    from verl_specrollout.learner.publisher import LATEST_NAME, version_name

    pub = tmp_path / "pub"
    a = start_learner(toy, learner_cfg(pub, actor_name="fault_corrupt", keep_versions=10))
    assert get(a.publish.remote()) == 1
    rel = reloader_on(engine, toy, pub)
    assert rel.maybe_reload() == 1
    a_v1 = acceptance(engine)
    assert a_v1 > 1.5

    def corrupt_next(damage):
        v = get(a.publish.remote())
        damage(str(pub / version_name(v)))
        return v

    # LATEST naming each in turn; v9: a version directory that is not there
    bad = {"half-written": corrupt_next(_truncate), "NaN weights": corrupt_next(_nan_checkpoint), "missing dir": 9}
    with caplog.at_level("WARNING"):
        for what, v in bad.items():
            (pub / LATEST_NAME).write_text(version_name(v) + "\n")
            for _ in range(3):  # refused once, then not retried
                assert rel.maybe_reload() == 1
            assert v in rel.bad_versions, what
            assert abs(acceptance(engine) - a_v1) < 1e-6, what  # the live draft is untouched
    assert rel.failures == 3 and rel.current_draft_version == 1
    refused = [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage()]
    assert len(refused) == 3 and all("live draft stays v1" in msg for msg in refused), refused
    assert "non-finite" in refused[1] and "no model.safetensors" in refused[2]

    # Sleep discarded the draft while LATEST is bad: the restore takes the newest good version on
    # disk (v1, the live one), never the bootstrap draft (v0) -- the version does not go back.
    assert rel.restore() == 1
    assert abs(acceptance(engine) - a_v1) < 1e-6

    get(a.add_batch.remote(toy["samples"], 3))
    out = get(a.train_and_publish.remote(1))  # a newer good version
    assert out["published"] and rel.maybe_reload() == out["version"] and rel.failures == 3
    assert acceptance(engine) > 1.5
    ray_local.kill(a, no_restart=True)


# ----------------------------------------------------------------------------- 5. trainer resumed

def _opt_fingerprint(learner):
    """Runs in the learner's process: a summary of the AdamW moments (the state a resume must keep)."""
    return {k: float(v["exp_avg"].double().sum() + v["exp_avg_sq"].double().sum())
            for k, v in learner.trainer.opt.state_dict()["state"].items()}


def test_resumed_job_new_learner_resumes_and_a_fresh_server_loads_the_newest(ray_local, toy, engine, tmp_path):
    """Emulated at the learner / reloader level (a real veRL resume is two full veRL runs, several
    minutes each here): the job stops, a new learner process with the same publish_dir and
    state_dir resumes, and a rollout server starting with no version loads the newest draft."""
    from verl_specrollout.draft.eagle3 import read_weights
    from verl_specrollout.draft.format import find_weight_files
    from verl_specrollout.learner.publisher import read_latest, version_name

    pub, state = tmp_path / "pub", tmp_path / "state"
    cfg = learner_cfg(pub, state_dir=str(state))
    a = start_learner(toy, cfg)  # default name: derived from the publish_dir, as in a real job
    get(a.add_batch.remote(toy["samples"], 3))
    assert get(a.train_and_publish.remote(2))["version"] == 1
    get(a.add_batch.remote(toy["samples"], 4))
    assert get(a.train_and_publish.remote(1))["version"] == 2
    before = get(a.stats.remote(evaluate=False))
    opt_before = get(a.__ray_call__.remote(_opt_fingerprint))
    ray_local.kill(a, no_restart=True)  # the job ends
    # A publish cut short just before the end: v3 complete on disk, LATEST still v2, state at v2.
    shutil.copytree(pub / version_name(2), pub / version_name(3))

    b = start_learner(toy, cfg)  # the resumed job: same publish_dir / state_dir, new process
    st = get(b.stats.remote(evaluate=False))
    assert st["resumed"] and st["draft_step"] == before["draft_step"] == 3
    assert st["published_up_to_policy_step"] == before["published_up_to_policy_step"] == 4
    assert st["version"] == 3  # above every version on disk: v3 is never reused
    assert get(b.__ray_call__.remote(_opt_fingerprint)) == opt_before
    assert len(learner_log_lines(f"resumed from {state}")) == 1

    rel = reloader_on(engine, toy, pub)  # a rollout server starting fresh
    assert rel.maybe_reload() == 2 == read_latest(str(pub))[0]  # it follows LATEST, not a stray dir
    assert acceptance(engine) > 1.5
    assert get(b.publish.remote()) == 4  # no training since: exactly the resumed weights
    v2 = read_weights(str(pub / version_name(2)), find_weight_files(str(pub / version_name(2))))
    v4 = read_weights(str(pub / version_name(4)), find_weight_files(str(pub / version_name(4))))
    assert v2.keys() == v4.keys() and all(torch.equal(v2[k], v4[k]) for k in v2)
    assert rel.maybe_reload() == 4 and rel.failures == 0
    ray_local.kill(b, no_restart=True)


# ----------------------------------------------------------------------------- 6. weight sync, no reload

class _ServerStandIn:
    """What the trainer asks a rollout server each step (``specrollout_step_metrics``), answered
    from a real reloader on the real engine; this server syncs weights but never reloads."""

    def __init__(self, rel):
        self.rel = rel
        self.specrollout_step_metrics = types.SimpleNamespace(remote=self._metrics)

    def _metrics(self):
        import ray

        v = self.rel.current_draft_version or 0
        return ray.put({"draft_version": v, "draft_version_live": v, "draft_reloads": 0,
                        "draft_reload_failures": self.rel.failures})


def _spec_cfg(pub, toy):
    from omegaconf import OmegaConf

    from verl_specrollout.verl_adapter.actor_hooks import spec_config

    spec = {"enable": True, "method": "eagle3", "draft_path": toy["draft"],
            "learner": {"enable": True, "publish_dir": str(pub), "actor_namespace": NAMESPACE}}
    return spec_config(OmegaConf.create({"custom": {"specrollout": spec}}))


def test_weight_sync_without_draft_reload_grows_stale_steps_and_warns_once_per_stall(ray_local, toy, engine,
                                                                                    tmp_path, caplog):
    from verl_specrollout.metrics import DRAFT_STALE_STEPS, DRAFT_VERSION_LIVE, LEARNER
    from verl_specrollout.verl_adapter import trainer_hooks

    pub = tmp_path / "pub"
    a = start_learner(toy, learner_cfg(pub))  # found by the trainer by the name derived from publish_dir
    get(a.add_batch.remote(toy["samples"], 0))
    rel = reloader_on(engine, toy, pub)
    cfg, server = _spec_cfg(pub, toy), _ServerStandIn(rel)
    trainer_hooks._state = None  # a fresh job in this process

    def step(n, reload):
        assert get(a.train_and_publish.remote(1))["published"]  # the learner is on and publishes
        if reload:
            rel.maybe_reload()
        return trainer_hooks.collect_step_metrics(cfg, n, handles=[server])

    stale, warned = [], []
    with caplog.at_level("WARNING", logger="verl_specrollout"):
        for n, reload in enumerate([True] + [False] * 4 + [True] + [False] * 3, start=1):
            out = step(n, reload)
            stale.append(out[DRAFT_STALE_STEPS])
            warned.append(sum("has not advanced" in r.getMessage() for r in caplog.records))
            assert out[LEARNER.format(name="version")] == n and out[LEARNER.format(name="alive")] == 1.0
    assert stale == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    assert warned == [0, 0, 0, 1, 1, 1, 1, 1, 2]  # once per stall, when it passes patience (3)
    msg = [r.getMessage() for r in caplog.records if "has not advanced" in r.getMessage()][0]
    assert "live version 1" in msg and "learner alive" in msg
    assert out[DRAFT_VERSION_LIVE] == 6.0  # rollouts ran on the last draft they loaded all along
    assert acceptance(engine) > 1.5
    ray_local.kill(a, no_restart=True)
