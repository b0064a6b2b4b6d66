"""Config validation: every bad input gets one clear error naming the key."""

import json

import pytest

from verl_specrollout.config import SpecRolloutConfig, SpecRolloutConfigError
from verl_specrollout.vllm_adapter.engine_kwargs import build_engine_kwargs, initial_table


def _ckpt(tmp_path, name, vocab):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"vocab_size": vocab}))
    return str(d)


def _cfg(**kw):
    base = {"enable": True, "method": "eagle3", "max_k": 4}
    base.update(kw)
    return SpecRolloutConfig.from_dict(base)


def test_disabled_config_is_inert():
    cfg = SpecRolloutConfig.from_dict(None)
    assert not cfg.enable
    assert build_engine_kwargs(cfg) == {}
    cfg.validate()  # nothing to check when off


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"method": "medusa"}, "method='medusa' is not supported"),
        ({"draft_path": None}, "draft_path is required"),
        ({"max_k": 0}, "max_k must be an integer >= 1"),
        ({"max_k": 99}, "above the supported maximum"),
        ({"planner": {"mode": "sometimes"}}, "planner.mode='sometimes'"),
        ({"planner": {"replan_interval": 0}}, "replan_interval must be >= 1"),
        ({"planner": {"table": [[2, 8, 2]]}}, "contiguous from batch 1"),
        ({"planner": {"table": [[1, 8, 9]]}}, "K must be in 0..max_k"),
        ({"learner": {"enable": True, "placement": "moon"}}, "placement='moon'"),
    ],
)
def test_bad_values_raise_one_clear_error(tmp_path, kw, match):
    kw.setdefault("draft_path", _ckpt(tmp_path, "draft", 100))
    with pytest.raises(SpecRolloutConfigError, match=match):
        _cfg(**kw).validate()


def test_unknown_key_is_named():
    with pytest.raises(SpecRolloutConfigError, match="unknown key.*draft_pth"):
        SpecRolloutConfig.from_dict({"enable": True, "draft_pth": "/x"})


def test_missing_draft_dir(tmp_path):
    with pytest.raises(SpecRolloutConfigError, match="not a checkpoint directory"):
        _cfg(draft_path=str(tmp_path / "nope")).validate()


def test_vocab_mismatch(tmp_path):
    target = _ckpt(tmp_path, "target", 320)
    draft = _ckpt(tmp_path, "draft", 256)
    with pytest.raises(SpecRolloutConfigError, match="does not match the target"):
        _cfg(draft_path=draft).validate(target)
    _cfg(draft_path=draft, skip_vocab_check=True).validate(target)  # explicit opt-out


def test_ngram_needs_no_draft():
    kw = build_engine_kwargs(_cfg(method="ngram"))
    spec = kw["speculative_config"]
    assert spec["method"] == "ngram" and "model" not in spec
    assert spec["num_speculative_tokens"] == 4


def test_engine_kwargs_real_draft_load_and_scheduler(tmp_path):
    draft = _ckpt(tmp_path, "draft", 100)
    kw = build_engine_kwargs(_cfg(draft_path=draft), draft_load_config_supported=True)
    spec = kw["speculative_config"]
    assert spec["model"] == draft
    # veRL's dummy load must never reach the draft
    assert spec["draft_load_config"] == {"load_format": "auto"}
    assert kw["scheduler_cls"].endswith("SpecRolloutScheduler")
    assert kw["additional_config"]["specrollout"]["max_k"] == 4
    # Older vLLM without draft_load_config: the whole engine loads real weights.
    kw_old = build_engine_kwargs(_cfg(draft_path=draft), draft_load_config_supported=False)
    assert kw_old["load_format"] == "auto" and "draft_load_config" not in kw_old["speculative_config"]


def test_user_speculative_config_conflict(tmp_path):
    draft = _ckpt(tmp_path, "draft", 100)
    with pytest.raises(SpecRolloutConfigError, match="configure speculation in one place"):
        build_engine_kwargs(_cfg(draft_path=draft), existing={"speculative_config": {"method": "ngram"}})


def test_initial_tables():
    assert initial_table(_cfg(method="ngram")) == [[1, 1024, 4]]
    assert initial_table(_cfg(method="ngram", planner={"mode": "off"})) == [[1, 1024, 0]]
    pinned = [[1, 4, 4], [5, 32, 2], [33, 1024, 0]]
    assert initial_table(_cfg(method="ngram", planner={"mode": "static", "table": pinned})) == pinned
    # static without a table: no planner, no scheduler subclass
    assert "scheduler_cls" not in build_engine_kwargs(_cfg(method="ngram", planner={"mode": "static"}))


def test_from_rollout_config_reads_omegaconf():
    from omegaconf import OmegaConf

    rollout = OmegaConf.create({"name": "vllm", "custom": {"specrollout": {"enable": True, "method": "ngram"}}})
    assert SpecRolloutConfig.from_rollout_config(rollout).method == "ngram"
    assert not SpecRolloutConfig.from_rollout_config(OmegaConf.create({"custom": None})).enable
