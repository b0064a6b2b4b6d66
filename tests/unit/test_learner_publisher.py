import os

import pytest
import torch

from verl_specrollout.draft.eagle3 import Eagle3Config, Eagle3Draft, load_vllm_checkpoint
from verl_specrollout.learner import publisher as pubmod
from verl_specrollout.learner.publisher import Publisher, list_versions, read_latest, read_meta


def _draft(seed=0):
    torch.manual_seed(seed)
    return Eagle3Draft(Eagle3Config(hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
                                    intermediate_size=64, vocab_size=64, aux_layer_ids=[0, 1]))


def test_versioning_latest_and_keep(tmp_path):
    p = Publisher(str(tmp_path), keep=2)
    assert p.latest_version() is None
    for v in (1, 2, 3):
        path = p.publish(_draft(v), v, {"trained_up_to_policy_step": 10 + v})
        assert os.path.basename(path) == f"v{v:06d}"
    assert read_latest(str(tmp_path)) == (3, os.path.join(str(tmp_path), "v000003"))
    assert list_versions(str(tmp_path)) == [2, 3]
    assert read_meta(os.path.join(str(tmp_path), "v000003"))["trained_up_to_policy_step"] == 13
    m = load_vllm_checkpoint(os.path.join(str(tmp_path), "v000003"))
    torch.testing.assert_close(m.fc.weight, _draft(3).fc.weight)
    # no temp leftovers
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]


def test_failed_publish_keeps_latest(tmp_path, monkeypatch):
    p = Publisher(str(tmp_path), keep=3)
    p.publish(_draft(1), 1)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pubmod, "save_vllm_checkpoint", boom)
    with pytest.raises(OSError):
        p.publish(_draft(2), 2)
    assert read_latest(str(tmp_path))[0] == 1
    assert list_versions(str(tmp_path)) == [1]


def test_latest_written_atomically(tmp_path, monkeypatch):
    """LATEST is replaced with os.replace of a complete temp file: a crash before the replace
    leaves the old pointer intact."""
    p = Publisher(str(tmp_path), keep=3)
    p.publish(_draft(1), 1)
    real = os.replace

    def crash(src, dst):
        if os.path.basename(dst) == "LATEST":
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(pubmod.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        p.publish(_draft(2), 2)
    monkeypatch.setattr(pubmod.os, "replace", real)
    assert read_latest(str(tmp_path))[0] == 1
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-LATEST")]


def test_malformed_latest_is_ignored_and_logged(tmp_path, caplog):
    Publisher(str(tmp_path)).publish(_draft(), 7)
    assert read_latest(str(tmp_path)) == (7, os.path.join(str(tmp_path), "v000007"))
    (tmp_path / pubmod.LATEST_NAME).write_text("garbage\n")
    with caplog.at_level("WARNING"):
        assert read_latest(str(tmp_path)) is None
    assert "malformed" in caplog.text
