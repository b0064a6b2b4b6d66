"""Learner state: safetensors + JSON header, nothing unpickled; a planted pickle never runs; a
retired ``.pt`` state stops the learner instead of being read or silently dropped; a restarted
learner never reuses a version number."""
import json
import os
import pickle

import pytest
import torch

from verl_specrollout.learner.actor import SpecLearner
from verl_specrollout.learner.journal import JOURNAL_DIR
from verl_specrollout.learner.state import (RETIRED_STATE_NAME, STATE_META_KEY, STATE_NAME, LearnerStateError)
from verl_specrollout.learner.publisher import Publisher, read_latest
from verl_specrollout.testing.testbed.toy import TOY_AUX, get_toy, toy_samples


def _learner(tmp_path, **kw):
    torch.set_num_threads(1)
    return SpecLearner({"publish_dir": str(tmp_path / "pub"), "buffer_bytes": 8 << 20}, get_toy()["target"],
                       TOY_AUX, batch_size=2, num_steps=1, heldout_every=1000, **kw)


def _same_weights_and_optimizer(a, b):
    for (n, p), q in zip(a.trainer.draft.named_parameters(), b.trainer.draft.parameters()):
        assert torch.equal(p, q), n
    sa, sb = a.trainer.opt.state_dict(), b.trainer.opt.state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    for k in sa["state"]:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(sa["state"][k][key]), torch.as_tensor(sb["state"][k][key]))
    assert sa["param_groups"] == sb["param_groups"]


def test_state_is_safetensors_with_a_json_header_and_resumes(tmp_path):
    from safetensors import safe_open

    a = _learner(tmp_path)
    a.add_batch(toy_samples(4), policy_step=3)
    a.train(2)
    assert a.publish() == 1
    state_dir = str(tmp_path / "pub" / "state")
    assert sorted(os.listdir(state_dir)) == [JOURNAL_DIR, STATE_NAME]  # no pickle, no temp leftovers
    with safe_open(os.path.join(state_dir, STATE_NAME), framework="pt") as f:
        meta = json.loads(f.metadata()[STATE_META_KEY])
        names = list(f.keys())
    assert meta["version"] == 1 and meta["draft_step"] == 2 and meta["trained_up_to"] == 3
    assert meta["opt_param_groups"][0]["lr"] == a.cfg.lr and meta["eagle3_config"]["aux_layer_ids"] == TOY_AUX
    assert any(n.startswith("draft.") for n in names) and any(n.endswith(".exp_avg") for n in names)
    b = _learner(tmp_path)
    assert b.state.resumed and b.state.error is None and b.version == 1 and b.trainer.step == 2
    assert b.metrics()["state_refused"] == 0.0
    assert b.progress.published_up_to == 3 and b.metrics(4)["lag"] == 1
    _same_weights_and_optimizer(a, b)
    b.add_batch(toy_samples(2, seed=1), policy_step=4)
    b.train(1)  # the loaded optimizer state steps on
    assert b.trainer.step == 3 and b.publish() == 2


class _Payload:
    """Unpickling this writes a marker file: what a crafted state file could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def _plant(path, marker, how):
    if how == "pickle":
        with open(path, "wb") as f:
            pickle.dump({"trainer": _Payload(marker)}, f)
    else:  # torch.save's zip container around the same pickle
        torch.save({"trainer": _Payload(marker)}, path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["pickle", "torch_save"])
def test_planted_pickle_never_runs_and_is_refused_clearly(tmp_path, caplog, how):
    live = tmp_path / "payload_is_live"
    pickle.loads(pickle.dumps(_Payload(live)))  # the payload really runs when unpickled
    assert live.exists()

    marker = tmp_path / "marker"
    state_dir = tmp_path / "pub" / "state"
    state_dir.mkdir(parents=True)
    name = STATE_NAME
    _plant(str(state_dir / name), marker, how)
    with caplog.at_level("ERROR"):
        a = _learner(tmp_path)
    assert not marker.exists()
    # refused, logged once with the file named, and the learner starts fresh
    assert not a.state.resumed and a.version == 0 and a.trainer.step == 0
    assert str(state_dir / name) in a.state.error
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "refusing to resume" in errors[0].getMessage()
    assert str(state_dir / name) in errors[0].getMessage() and "Starting fresh" in errors[0].getMessage()
    assert a.metrics()["state_refused"] == 1.0
    # it keeps running, and the next save replaces the planted file with a real state
    a.add_batch(toy_samples(2), policy_step=1)
    a.train(1)
    assert a.publish() == 1
    assert not marker.exists()
    assert _learner(tmp_path).state.resumed  # the saved state is read from now on


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["pickle", "torch_save"])
def test_a_retired_pt_state_stops_the_learner_with_the_file_named(tmp_path, how):
    """``learner_state.pt`` (pre-release versions' torch.save pickle) is never read: a state dir
    holding only it is training state this version cannot resume, so the learner refuses to start
    over beside it, and the file is left as it was."""
    marker = tmp_path / "marker"
    state_dir = tmp_path / "pub" / "state"
    state_dir.mkdir(parents=True)
    retired = state_dir / RETIRED_STATE_NAME
    _plant(str(retired), marker, how)
    before = retired.read_bytes()
    with pytest.raises(LearnerStateError, match="pre-release versions") as info:
        _learner(tmp_path)
    assert str(retired) in str(info.value) and "learner.state_dir" in str(info.value)
    assert not marker.exists() and retired.read_bytes() == before
    assert not (state_dir / STATE_NAME).exists() and not (tmp_path / "pub" / "LATEST").exists()


def test_a_safetensors_state_beside_a_retired_pt_one_is_the_state(tmp_path):
    a = _learner(tmp_path)
    a.add_batch(toy_samples(2), policy_step=1)
    a.train(1)
    assert a.publish() == 1
    (tmp_path / "pub" / "state" / RETIRED_STATE_NAME).write_bytes(b"left over")
    b = _learner(tmp_path)
    assert b.state.resumed and b.version == 1 and b.trainer.step == 1
    _same_weights_and_optimizer(a, b)


def test_load_state_refusal_keeps_the_running_state(tmp_path):
    a = _learner(tmp_path)
    a.add_batch(toy_samples(2), policy_step=1)
    a.train(1)
    a.publish()
    before = {n: p.detach().clone() for n, p in a.trainer.draft.named_parameters()}
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / STATE_NAME).write_bytes(b"not a safetensors file")
    with pytest.raises(LearnerStateError, match="not a safetensors learner state"):
        a.load_state(str(bad))
    assert a.version == 1 and a.trainer.step == 1
    assert all(torch.equal(p, before[n]) for n, p in a.trainer.draft.named_parameters())


def test_version_never_goes_backwards_after_a_publish_whose_state_was_not_saved(tmp_path):
    a = _learner(tmp_path)
    assert a.publish() == 1  # state saved with version 1
    a.save_state_on_publish = False
    assert a.publish() == 2  # a crash right after this publish: the saved state still says 1
    b = _learner(tmp_path)
    assert b.state.resumed and b.version == 2 and b.publish() == 3
    assert read_latest(str(tmp_path / "pub"))[0] == 3


def test_newest_version_counts_a_complete_version_dir_past_latest(tmp_path):
    from verl_specrollout.draft.eagle3 import Eagle3Config, Eagle3Draft

    draft = Eagle3Draft(Eagle3Config(hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
                                     intermediate_size=64, vocab_size=64, aux_layer_ids=[0, 1]))
    p = Publisher(str(tmp_path), keep=5)
    assert p.newest_version() is None
    p.publish(draft, 1)
    p.publish(draft, 2)
    (tmp_path / "LATEST").write_text("v000001\n")  # LATEST not moved yet when the publish was cut short
    assert p.latest_version() == 1 and p.newest_version() == 2
