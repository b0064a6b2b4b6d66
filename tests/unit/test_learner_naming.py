"""One learner per job: the actor's name comes from the publish_dir unless set, and a learner of
another job found under this job's name is refused with one clear error."""
import os

import pytest

from verl_specrollout.errors import SpecRolloutConfigError
from verl_specrollout.learner.remote import DEFAULT_NAME, check_identity, learner_actor_name


def test_default_name_is_derived_from_the_publish_dir(tmp_path, monkeypatch):
    a = learner_actor_name({"publish_dir": "/jobs/a/drafts"})
    b = learner_actor_name({"publish_dir": "/jobs/b/drafts"})
    assert a != b and a.startswith(DEFAULT_NAME + "_") and len(a) == len(DEFAULT_NAME) + 11
    assert learner_actor_name({"publish_dir": "/jobs/a/drafts/", "actor_name": DEFAULT_NAME}) == a
    monkeypatch.chdir(tmp_path)
    assert learner_actor_name({"publish_dir": "drafts"}) == learner_actor_name({"publish_dir": str(tmp_path / "drafts")})


def test_explicit_name_is_used_as_is():
    assert learner_actor_name({"publish_dir": "/jobs/a", "actor_name": "mine"}) == "mine"


def test_identity_mismatch_names_both_publish_dirs():
    have = {"target_dir": "/models/m", "publish_dir": "/jobs/a/drafts", "aux_layer_ids": [1, 2]}
    check_identity(have, dict(have), "n", "ns")  # the same job: fine
    check_identity(have, {**have, "aux_layer_ids": None}, "n", "ns")  # not given: not compared
    with pytest.raises(SpecRolloutConfigError) as e:
        check_identity(have, {**have, "publish_dir": "/jobs/b/drafts"}, "shared", "ns")
    msg = str(e.value)
    assert "/jobs/a/drafts" in msg and "/jobs/b/drafts" in msg and "'shared'" in msg and "publish_dir" in msg
    with pytest.raises(SpecRolloutConfigError, match="aux_layer_ids"):
        check_identity(have, {**have, "aux_layer_ids": [0, 2]}, "n", "ns")
    with pytest.raises(SpecRolloutConfigError, match="target_dir"):
        check_identity(have, {**have, "target_dir": os.path.abspath("/models/other")}, "n", "ns")
