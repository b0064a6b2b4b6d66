"""The `decoupled` config section: its rules, and what an engine does with it."""

from types import SimpleNamespace

import pytest

from verl_specrollout.config import SpecRolloutConfig
from verl_specrollout.decoupled import engine
from verl_specrollout.errors import SpecRolloutConfigError


def cfg(method="eagle3+group", **decoupled):
    return SpecRolloutConfig.from_dict({"enable": True, "method": method, "draft_path": "/ckpt",
                                        "decoupled": {"enable": True, **decoupled}})


def test_decoupled_needs_a_group_method_and_a_draft_lm():
    with pytest.raises(SpecRolloutConfigError, match="decoupled.enable=true needs method=eagle3\\+group"):
        engine_rules(cfg("eagle3", draft_lm_path="/lm"))
    with pytest.raises(SpecRolloutConfigError, match="decoupled.draft_lm_path"):
        engine_rules(cfg("eagle3+group"))
    engine_rules(cfg("draft_model+group"))  # the draft LM is draft_path
    engine_rules(cfg("group", draft_lm_path="/lm"))
    c = SpecRolloutConfig.from_dict({"decoupled": None})
    assert c.decoupled.enable is False and c.decoupled.depth == 8


def engine_rules(c):
    from verl_specrollout.config import ENABLED_RULES

    for rule in ENABLED_RULES:
        if rule.__name__ == "_decoupled_needs_group":
            rule(c)


@pytest.mark.parametrize("bad", [{"depth": 0}, {"branches": 9}, {"max_branches": -1}, {"exchange_ms": 0.0}, {"max_tail_mb": 0},
                                 {"enable": "true"}, {"drafter": 1}])
def test_bad_decoupled_values_are_refused_with_the_full_key(bad):
    with pytest.raises(SpecRolloutConfigError, match="specrollout.decoupled"):
        SpecRolloutConfig.from_dict({"decoupled": bad})


def _runner(tp: int):
    return SimpleNamespace(vllm_config=SimpleNamespace(parallel_config=SimpleNamespace(tensor_parallel_size=tp)))


def test_engine_takes_no_tails_when_off_or_under_tensor_parallelism(caplog):
    off = SpecRolloutConfig.from_dict({"enable": True, "method": "eagle3+group", "draft_path": "/ckpt"})
    assert engine.link_for(off, _runner(1)) is None
    assert engine.link_for(cfg(draft_lm_path="/lm"), _runner(2)) is None
    assert "tensor_parallel_size=2" in caplog.text


def test_exchange_is_named_per_job():
    assert engine.exchange_job(cfg(draft_lm_path="/lm", exchange_name="jobA")) == "jobA"
    assert engine.exchange_job(cfg(draft_lm_path="/lm")) == cfg(draft_lm_path="/lm").learner.actor_name
