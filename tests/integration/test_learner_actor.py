"""Learner sidecar as a named detached Ray actor: capture -> ship -> train -> publish, crash and resume."""
import os

import pytest
import torch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from verl_specrollout.testing.testbed.toy import TOY_AUX, build_toy_target, capture_samples, greedy_rollouts, toy_prompts

    root = tmp_path_factory.mktemp("learner")
    target = build_toy_target(str(root / "target"))
    m = AutoModelForCausalLM.from_pretrained(target).eval()
    samples = capture_samples(m, TOY_AUX, greedy_rollouts(m, toy_prompts(12, seed=3), 16), policy_step=3)
    return {"root": root, "target": target, "aux": TOY_AUX, "samples": samples}


def test_actor_crash_resumes_from_saved_state(ray_local, toy):
    from verl_specrollout.capture.shipper import SampleShipper
    from verl_specrollout.vllm_adapter.draft_reload import read_latest
    from verl_specrollout.learner.remote import get_or_create_learner

    ray = ray_local
    pub = str(toy["root"] / "pub")
    cfg = {"enable": True, "placement": "cpu", "publish_dir": pub, "lr": 1e-3, "buffer_bytes": 8 << 20}
    kw = dict(batch_size=4, num_steps=1, name="test_learner", namespace="specrollout_test")
    a = get_or_create_learner(cfg, toy["target"], toy["aux"], **kw)
    assert get_or_create_learner(cfg, toy["target"], toy["aux"], **kw)._actor_id == a._actor_id  # named, found
    ship = SampleShipper(a, max_in_flight=2)
    assert ship.ship(toy["samples"], policy_step=3)
    # The actor is threaded (max_concurrency > 1), so a train call does not queue behind
    # add_batch: wait for the batch to land (actor start-up is slow on a loaded 2-core box).
    ship.flush(timeout=600)
    assert ship.stats()["sent"] == 1 and ship.stats()["in_flight"] == 0
    r = ray.get(a.train.remote(2))
    assert r["trained"] == 2
    assert ray.get(a.publish.remote()) == 1
    st = ray.get(a.stats.remote())
    assert st["draft_step"] == 2 and st["buffer_bytes"] > 0 and st["top1_agreement"] is not None
    assert ray.get(a.lag.remote(5)) == 2  # policy step 5, draft trained on data up to step 3

    ray.kill(a, no_restart=True)
    # rollouts keep the last good draft while the learner is down
    assert read_latest(pub)[0] == 1

    b = get_or_create_learner(cfg, toy["target"], toy["aux"], **kw)
    st2 = ray.get(b.stats.remote(evaluate=False))
    assert st2["resumed"] and st2["version"] == 1 and st2["draft_step"] == 2
    assert st2["published_up_to_policy_step"] == 3
    ray.get(b.add_batch.remote(toy["samples"], 4))
    ray.get(b.train.remote(1))
    assert ray.get(b.publish.remote()) == 2  # version counter continues, never reuses v1
    assert read_latest(pub)[0] == 2
    ray.kill(b, no_restart=True)


def _sleep(seconds):
    import time

    time.sleep(seconds)


def test_one_learner_per_job_and_metrics_never_queue(ray_local, toy, tmp_path):
    import time

    from verl_specrollout.errors import SpecRolloutConfigError
    from verl_specrollout.learner.remote import MAX_CONCURRENCY, get_or_create_learner

    ray = ray_local
    cfg_a = {"enable": True, "placement": "cpu", "publish_dir": str(tmp_path / "job_a"), "buffer_bytes": 8 << 20,
             "actor_name": "shared_learner", "actor_namespace": "specrollout_test"}
    a = get_or_create_learner(cfg_a, toy["target"], toy["aux"], batch_size=4, num_steps=1)
    assert ray.get(a.identity.remote(), timeout=600)["publish_dir"] == cfg_a["publish_dir"]
    # Every default-group thread waits on captured batches that do not come: metrics (control
    # group, lock-free) still answers at once.
    slow = ray.remote(num_cpus=0)(_sleep).remote(20)
    busy = [a.train_and_publish.remote(1, [slow], 12) for _ in range(MAX_CONCURRENCY + 1)]
    time.sleep(1)
    t0 = time.perf_counter()
    assert ray.get(a.metrics.remote(1), timeout=10)["version"] == 0
    assert time.perf_counter() - t0 < 3
    # A second job under the same explicit name is refused, naming both jobs' publish_dirs.
    cfg_b = {**cfg_a, "publish_dir": str(tmp_path / "job_b")}
    with pytest.raises(SpecRolloutConfigError) as e:
        get_or_create_learner(cfg_b, toy["target"], toy["aux"], batch_size=4, num_steps=1)
    assert cfg_a["publish_dir"] in str(e.value) and cfg_b["publish_dir"] in str(e.value)
    assert get_or_create_learner(cfg_a, toy["target"], toy["aux"])._actor_id == a._actor_id  # same job: found
    assert all(not r["published"] for r in ray.get(busy, timeout=120))  # nothing captured: nothing trained
    ray.kill(a, no_restart=True)


def test_learner_restarts_after_a_crash_and_resumes(ray_local, toy):
    import time

    from verl_specrollout.learner.remote import get_or_create_learner, learner_actor_name
    from verl_specrollout.learner.publisher import read_latest

    ray = ray_local
    pub = str(toy["root"] / "pub_restart")
    cfg = {"enable": True, "placement": "cpu", "publish_dir": pub, "lr": 1e-3, "buffer_bytes": 8 << 20,
           "actor_namespace": "specrollout_test"}  # default actor_name: derived from the publish_dir
    a = get_or_create_learner(cfg, toy["target"], toy["aux"], batch_size=4, num_steps=1)
    assert ray.get_actor(learner_actor_name(cfg), namespace="specrollout_test")._actor_id == a._actor_id
    ray.get(a.add_batch.remote(toy["samples"], 3), timeout=600)
    assert ray.get(a.train.remote(2))["trained"] == 2
    assert ray.get(a.publish.remote()) == 1
    assert not ray.get(a.stats.remote(evaluate=False))["resumed"]

    ray.kill(a, no_restart=False)  # a crash: Ray restarts the actor behind the same handle
    deadline = time.monotonic() + 600
    while True:  # calls sent before the kill lands still reach the old process
        st = ray.get(a.stats.remote(evaluate=False), timeout=600)
        if st["resumed"] or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert st["resumed"] and st["version"] == 1 and st["draft_step"] == 2
    assert st["published_up_to_policy_step"] == 3 and st["state_error"] is None
    ray.get(a.add_batch.remote(toy["samples"], 4))
    assert ray.get(a.train.remote(1))["trained"] == 1
    assert ray.get(a.publish.remote()) == 2 and read_latest(pub)[0] == 2  # the counter goes on
    ray.kill(a, no_restart=True)


def test_state_roundtrip_includes_optimizer(toy, tmp_path):
    from verl_specrollout.learner.actor import SpecLearner

    cfg = {"publish_dir": str(tmp_path / "pub"), "buffer_bytes": 8 << 20}
    a = SpecLearner(cfg, toy["target"], toy["aux"], batch_size=4, num_steps=1)
    a.add_batch(toy["samples"], 3)
    a.train(2)
    a.save_state(str(tmp_path / "st"))
    b = SpecLearner(cfg, toy["target"], toy["aux"], batch_size=4, num_steps=1, state_dir=str(tmp_path / "st"))
    assert b.state.resumed and b.trainer.step == 2
    for (n, p), q in zip(a.trainer.draft.named_parameters(), b.trainer.draft.parameters()):
        assert torch.equal(p, q), n
    sa, sb = a.trainer.opt.state_dict()["state"], b.trainer.opt.state_dict()["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) for k in sa)


def test_mirror_to_nodes(ray_local, toy, tmp_path):
    from verl_specrollout.draft.eagle3 import load_vllm_checkpoint
    from verl_specrollout.learner.actor import SpecLearner
    from verl_specrollout.learner.publisher import mirror_to_nodes, read_latest

    a = SpecLearner({"publish_dir": str(tmp_path / "pub")}, toy["target"], toy["aux"], save_state_on_publish=False)
    a.publish()
    src = read_latest(str(tmp_path / "pub"))[1]
    paths = mirror_to_nodes(src, str(tmp_path / "node_local"))
    assert len(paths) == 1 and read_latest(str(tmp_path / "node_local"))[0] == 1
    load_vllm_checkpoint(paths[0])


def _toy_engine(target, draft_dir):
    from verl_specrollout.config import SpecRolloutConfig
    from verl_specrollout.vllm_adapter.offline_engine import make_llm

    spec = SpecRolloutConfig.from_dict({"enable": True, "method": "eagle3", "draft_path": draft_dir, "max_k": 3,
                                        "planner": {"mode": "static"}})
    return make_llm(target, spec, skip_tokenizer_init=True, max_model_len=256, gpu_memory_utilization=0.08)


def _toy_acceptance(llm):
    from vllm import SamplingParams, TokensPrompt

    from verl_specrollout.vllm_adapter.spec_counters import read_counters
    from verl_specrollout.testing.testbed.toy import toy_prompts

    c0 = read_counters(llm)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in toy_prompts(8, seed=99)],
                        SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True), use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == 32 for o in outs)  # rollouts complete
    return (read_counters(llm) - c0).mean_acceptance_length


def test_learner_crash_rollouts_keep_last_good_draft_then_resume(ray_local, tmp_path):
    """Real engine + real learner actor: the engine runs the learner's v1 (a trained head); the
    learner is killed; rollouts go on with v1 (no reload, no failure, same acceptance); a
    restarted learner resumes from its saved state and its next version reaches the engine."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from verl_specrollout.draft.eagle3 import Eagle3Config, Eagle3Draft, load_vllm_checkpoint, save_vllm_checkpoint
    from verl_specrollout.vllm_adapter.draft_reload import DraftReloader, read_latest
    from verl_specrollout.learner.remote import get_or_create_learner
    from verl_specrollout.testing.testbed.toy import TOY_AUX, capture_samples, get_toy, greedy_rollouts, toy_prompts

    ray = ray_local
    torch.set_num_threads(2)
    toy = get_toy()  # cached tiny target + trained EAGLE-3 head
    good = load_vllm_checkpoint(toy["draft"])
    torch.manual_seed(7)
    rand_dir = save_vllm_checkpoint(Eagle3Draft(Eagle3Config(**good.config.__dict__)), str(tmp_path / "random"),
                                    AutoConfig.from_pretrained(toy["target"]))
    pub = str(tmp_path / "pub")
    cfg = {"enable": True, "placement": "cpu", "publish_dir": pub, "lr": 1e-4, "buffer_bytes": 8 << 20}
    kw = dict(batch_size=4, num_steps=1, name="crash_learner", namespace="specrollout_test",
              bootstrap_dir=toy["draft"])
    a = get_or_create_learner(cfg, toy["target"], TOY_AUX, **kw)
    assert ray.get(a.publish.remote()) == 1  # v1 = the trained head (state saved on publish)

    llm = _toy_engine(toy["target"], rand_dir)  # starts on a random draft
    rel = DraftReloader.for_llm(llm, pub, initial_version=0)
    a_rand = _toy_acceptance(llm)
    assert rel.maybe_reload() == 1
    a_v1 = _toy_acceptance(llm)
    assert a_v1 > 1.5 and a_v1 > a_rand + 0.4, (a_rand, a_v1)  # the reload really changed the draft

    ray.kill(a, no_restart=True)  # learner crash
    half = os.path.join(pub, ".tmp-v000002-crashed")  # what a publish cut short leaves behind
    os.makedirs(half)
    with open(os.path.join(half, "model.safetensors"), "wb") as f:
        f.write(b"\0" * 64)
    for _ in range(2):  # rollouts continue with the last good draft
        assert rel.maybe_reload() == 1
        assert abs(_toy_acceptance(llm) - a_v1) < 1e-6
    assert rel.failures == 0 and read_latest(pub)[0] == 1

    b = get_or_create_learner(cfg, toy["target"], TOY_AUX, **kw)  # restarted learner
    st = ray.get(b.stats.remote(evaluate=False))
    assert st["resumed"] and st["version"] == 1
    m = AutoModelForCausalLM.from_pretrained(toy["target"]).eval()
    samples = capture_samples(m, TOY_AUX, greedy_rollouts(m, toy_prompts(8, seed=3), 16), policy_step=4)
    ray.get(b.add_batch.remote(samples, 4))
    assert ray.get(b.train.remote(1))["trained"] == 1
    assert ray.get(b.publish.remote()) == 2  # version numbers continue after the resume
    assert rel.maybe_reload() == 2 and rel.failures == 0
    assert _toy_acceptance(llm) > 1.5
    ray.kill(b, no_restart=True)


def test_a_retired_pt_state_fails_the_actor_with_the_file_named(ray_local, toy, tmp_path):
    """Through Ray: a state dir holding only a pre-release ``learner_state.pt`` is not started over
    beside; the caller's first call fails with the file named, and the file is left as it was."""
    from verl_specrollout.learner.remote import get_or_create_learner
    from verl_specrollout.learner.state import RETIRED_STATE_NAME

    ray = ray_local
    state = tmp_path / "state"
    state.mkdir()
    (state / RETIRED_STATE_NAME).write_bytes(b"a pre-release torch.save blob")
    cfg = {"enable": True, "placement": "cpu", "publish_dir": str(tmp_path / "pub"), "state_dir": str(state)}
    a = get_or_create_learner(cfg, toy["target"], toy["aux"], name="retired_state", namespace="specrollout_test")
    with pytest.raises(ray.exceptions.RayActorError) as info:
        ray.get(a.stats.remote(evaluate=False), timeout=600)
    assert str(state / RETIRED_STATE_NAME) in str(info.value) and "pre-release versions" in str(info.value)
    assert (state / RETIRED_STATE_NAME).read_bytes() == b"a pre-release torch.save blob"
    assert not (tmp_path / "pub" / "LATEST").exists()
