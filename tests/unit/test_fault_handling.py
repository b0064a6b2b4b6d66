"""Fault handling without Ray or vLLM: a failed reload call is a counted, logged, not-retried
failure; a draft restore never goes back to v0 while a good published version is on disk; an
unreadable LATEST is logged, not raised; a failed publish or state save is logged once, counted,
and never makes a version number go backwards or be reused."""
import errno
import os

import torch

from verl_specrollout.learner import publisher as pubmod
from verl_specrollout.learner.actor import SpecLearner
from verl_specrollout.learner.publisher import Publisher, read_latest
from verl_specrollout.testing.testbed.toy import TOY_AUX, get_toy
from verl_specrollout.vllm_adapter.draft_reload import DraftReloader


def _draft():
    from verl_specrollout.draft.eagle3 import Eagle3Config, Eagle3Draft

    torch.manual_seed(0)
    return Eagle3Draft(Eagle3Config(hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
                                    intermediate_size=64, vocab_size=64, aux_layer_ids=[0, 1]))


def _ok_rpc(calls):
    def rpc(method, args):
        calls.append(args)
        return [{"version": args[1], "ok": True, "error": None, "loaded": 1, "skipped": []}]
    return rpc


def test_a_reload_call_that_raises_is_one_counted_failure_not_retried(tmp_path, caplog):
    Publisher(str(tmp_path)).publish(_draft(), 1)
    calls = []

    def rpc(method, args):
        calls.append(args)
        raise TimeoutError("worker did not answer")

    rel = DraftReloader(rpc, str(tmp_path), initial_version=0)
    with caplog.at_level("WARNING"):
        for _ in range(3):
            assert rel.maybe_reload() == 0  # the live draft stays
    assert len(calls) == 1 and rel.failures == 1 and rel.bad_versions == {1}
    lines = [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage()]
    assert len(lines) == 1 and "worker did not answer" in lines[0] and "stays v0" in lines[0]


def test_restore_after_sleep_takes_the_newest_good_version_not_the_bootstrap(tmp_path):
    p = Publisher(str(tmp_path), keep=5)
    for v in (1, 2, 3):
        p.publish(_draft(), v)
    calls = []
    rel = DraftReloader(_ok_rpc(calls), str(tmp_path), initial_version=2, bootstrap_dir="/draft_path")
    rel.bad_versions.add(3)  # LATEST failed to load
    assert rel.restore_target() == (2, os.path.join(str(tmp_path), "v000002"))
    assert rel.restore() == 2
    rel.bad_versions.update({1, 2})
    assert rel.restore_target() == (0, "/draft_path")  # nothing good published: the bootstrap


def test_unreadable_latest_is_logged_not_raised(tmp_path, caplog):
    (tmp_path / "LATEST").mkdir()  # what a bad copy or a stray mkdir leaves
    with caplog.at_level("WARNING"):
        assert read_latest(str(tmp_path)) is None
    assert "cannot read" in caplog.text
    assert read_latest(str(tmp_path / "LATEST" / "nested")) is None  # publish_dir under a non-dir


def _learner(tmp_path, **kw):
    torch.set_num_threads(1)
    return SpecLearner({"publish_dir": str(tmp_path / "pub"), "buffer_bytes": 8 << 20}, get_toy()["target"],
                       TOY_AUX, batch_size=2, num_steps=1, heldout_every=1000, **kw)


def test_latest_not_moved_the_number_on_disk_is_never_reused(tmp_path, monkeypatch, caplog):
    a = _learner(tmp_path, save_state_on_publish=False)
    assert a.publish() == 1

    def no_space(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pubmod, "_atomic_write_text", no_space)  # v2's directory lands, LATEST does not move
    with caplog.at_level("ERROR"):
        for _ in range(2):
            try:
                a.publish()
            except OSError:
                pass
            else:
                raise AssertionError("publish should fail")
    assert read_latest(str(tmp_path / "pub"))[0] == 1 and a.publish_failures == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "LATEST still names v1" in errors[0]
    monkeypatch.undo()
    assert a.publish() == 4  # v2 and v3 directories are on disk: never reused
    assert read_latest(str(tmp_path / "pub"))[0] == 4 and a.metrics()["publish_failures"] == 2


def test_a_state_that_cannot_be_saved_does_not_undo_the_publish(tmp_path, caplog):
    (tmp_path / "not_a_dir").write_text("")
    a = _learner(tmp_path, state_dir=str(tmp_path / "not_a_dir" / "state"))
    with caplog.at_level("ERROR"):
        assert a.publish() == 1 and a.publish() == 2
    assert read_latest(str(tmp_path / "pub"))[0] == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    saving = [m for m in errors if "saving the learner state" in m]
    assert len(saving) == 1 and "v1 is published" in saving[0]
    # the state dir is unusable for the batch journal too: said once, at start
    assert [m for m in errors if m not in saving] == [m for m in errors if "batch journal" in m]
    assert len([m for m in errors if "batch journal" in m]) <= 1
    assert a.metrics()["state_save_failures"] == 2
