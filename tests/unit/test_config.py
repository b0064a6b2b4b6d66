"""Config validation: every bad input gets one clear error naming the key."""

import importlib.util
import json
import os

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
        ({"max_k": 0}, r"max_k must be an integer in \[1, 16\], got 0"),
        ({"max_k": 99}, r"max_k must be an integer in \[1, 16\], got 99"),  # 16 is the supported maximum
        ({"planner": {"mode": "sometimes"}}, "planner.mode='sometimes'"),
        ({"planner": {"replan_interval": 0}}, "planner.replan_interval must be an integer >= 1"),
        ({"planner": {"table": [[2, 8, 2]]}}, "contiguous from batch 1"),
        ({"planner": {"table": [[1, 8, 9]]}}, "K must be in 0..max_k"),
        ({"learner": {"enable": True, "placement": "moon"}}, "placement='moon'"),
        ({"learner": {"enable": True}, "method": "draft_model"}, "learner.enable=true needs method=eagle3"),
        ({"learner": {"feature_loss_weight": 0, "soft_ce_loss_weight": 0.0}}, "loss weights must be >= 0 and not both 0"),
        ({"method": "ngram", "prompt_lookup_min": 3, "prompt_lookup_max": 2}, "prompt_lookup_min must be >= 1 and <="),
        ({"learner": {"aux_layer_ids": [3, -1]}}, "learner.aux_layer_ids must be a non-empty list of layer indices"),
        ({"learner": {"aux_layer_ids": [True]}}, "learner.aux_layer_ids must be a non-empty list of layer indices"),
        ({"planner": {"verify_budget": "always"}}, "planner.verify_budget must be 'auto', an integer >= 0, or null"),
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
    # adaptive: the planner's cold start, long drafts only where the batch is small
    assert initial_table(_cfg(method="ngram")) == [[1, 12, 4], [13, 16, 3], [17, 21, 2], [22, 1024, 1]]
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


def test_string_false_does_not_switch_speculation_on():
    # A quoted "false" is a non-empty string; reading it as truthy once switched speculation on.
    with pytest.raises(SpecRolloutConfigError, match=r"specrollout.enable must be true or false, got 'false'.*unquoted"):
        SpecRolloutConfig.from_dict({"enable": "false"})
    with pytest.raises(SpecRolloutConfigError, match="specrollout.learner.enable must be true or false"):
        SpecRolloutConfig.from_dict({"learner": {"enable": "true"}})


def test_null_section_means_defaults_other_non_mappings_are_errors():
    cfg = SpecRolloutConfig.from_dict({"planner": None, "learner": None})
    assert cfg.planner == SpecRolloutConfig().planner and cfg.learner == SpecRolloutConfig().learner
    for bad in ([], [{"mode": "static"}], "static", 0, False):
        with pytest.raises(SpecRolloutConfigError, match="specrollout.learner must be a mapping"):
            SpecRolloutConfig.from_dict({"learner": bad})
    with pytest.raises(SpecRolloutConfigError, match="specrollout must be a mapping"):
        SpecRolloutConfig.from_dict([])


def test_types_are_checked_with_speculation_off():
    with pytest.raises(SpecRolloutConfigError, match="specrollout.planner.replan_interval must be an integer"):
        SpecRolloutConfig.from_dict({"enable": False, "planner": {"replan_interval": "16"}})
    cfg = SpecRolloutConfig()
    cfg.max_k = "4"  # set in Python after construction: validate() still catches it
    with pytest.raises(SpecRolloutConfigError, match="specrollout.max_k must be an integer"):
        cfg.validate()
    # ...but the draft checkpoint is only looked at when speculation is on.
    SpecRolloutConfig.from_dict({"enable": False, "draft_path": "/does/not/exist"}).validate()


def test_unknown_key_suggests_the_close_one():
    match = "under specrollout.planner: replan_intervl .*did you mean replan_interval"
    with pytest.raises(SpecRolloutConfigError, match=match):
        SpecRolloutConfig.from_dict({"planner": {"replan_intervl": 8}})


def test_int_for_float_key_becomes_float_and_round_trips():
    cfg = SpecRolloutConfig.from_dict({"learner": {"lr": 1, "gpu_fraction": 1}, "planner": {"table": ((1, 1024, 2),)}})
    assert cfg.learner.lr == 1.0 and isinstance(cfg.learner.lr, float)
    assert cfg.planner.table == [[1, 1024, 2]]
    assert SpecRolloutConfig.from_dict(cfg.to_dict()) == cfg


def test_omegaconf_values_are_checked_like_plain_ones():
    from omegaconf import OmegaConf

    ok = OmegaConf.create({"custom": {"specrollout": {"enable": True, "method": "ngram",
                                                      "planner": {"table": [[1, 1024, 3]]}}}})
    assert SpecRolloutConfig.from_rollout_config(ok).planner.table == [[1, 1024, 3]]
    bad = OmegaConf.create({"custom": {"specrollout": {"enable": "false"}}})
    with pytest.raises(SpecRolloutConfigError, match="specrollout.enable must be true or false"):
        SpecRolloutConfig.from_rollout_config(bad)


def _doc_tool():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location("gen_config_docs", os.path.join(root, "tools", "gen_config_docs.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_configuration_doc_matches_the_declarations():
    tool = _doc_tool()
    with open(tool.DOC) as f:
        current = f.read()
    assert tool.render(current) == current, "docs/configuration.md is stale: run python tools/gen_config_docs.py"


def test_configuration_doc_lists_every_key():
    from verl_specrollout.config import iter_keys

    with open(_doc_tool().DOC) as f:
        text = f.read()
    for key, _, _ in iter_keys():
        section, name = key.rsplit(".", 1)
        assert f"## `{section}`" in text and f"| `{name}` |" in text, key


# ----------------------------------------------------------------------------- Best-of-N group drafting
@pytest.mark.parametrize("method, base", [("eagle3+group", "eagle3"), ("draft_model+group", "draft_model"),
                                          ("group", "ngram")])
def test_group_methods_start_vllm_with_the_base_method(tmp_path, method, base):
    draft = _ckpt(tmp_path, "draft", 100) if base != "ngram" else None
    cfg = _cfg(method=method, draft_path=draft, group={"history_depth": 4, "max_match": 6})
    assert cfg.base_method == base and cfg.group_drafting
    kw = build_engine_kwargs(cfg, draft_load_config_supported=True)
    spec = kw["speculative_config"]
    assert spec["method"] == base
    assert ("model" in spec) == (base != "ngram") and ("prompt_lookup_min" in spec) == (base == "ngram")
    # The workers read the group method and section from additional_config.
    sent = kw["additional_config"]["specrollout"]
    assert sent["method"] == method and sent["group"] == {"max_index_tokens": 1_000_000, "history_depth": 4,
                                                          "max_match": 6, "route_by_prompt": True}
    assert kw["async_scheduling"] is False  # group drafting needs synchronous scheduling


def test_plain_methods_leave_async_scheduling_to_vllm(tmp_path):
    cfg = _cfg(draft_path=_ckpt(tmp_path, "draft", 100))
    assert not cfg.group_drafting and "async_scheduling" not in build_engine_kwargs(cfg)


def test_async_scheduling_chosen_by_the_user_is_kept_and_logged(tmp_path, caplog):
    cfg = _cfg(method="eagle3+group", draft_path=_ckpt(tmp_path, "draft", 100))
    with caplog.at_level("WARNING"):
        kw = build_engine_kwargs(cfg, existing={"async_scheduling": True})
    assert "async_scheduling" not in kw  # not overridden: that engine drafts with eagle3 alone
    assert any("group drafting needs synchronous scheduling" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kw, match", [
    ({"method": "draft_model+group", "learner": {"enable": True}}, "needs method=eagle3 or eagle3\\+group"),
    ({"method": "group", "learner": {"enable": True}}, "got method=group"),
    ({"method": "draft_model+group", "draft_path": None}, "draft_path is required for method=draft_model\\+group"),
    ({"method": "group", "prompt_lookup_min": 5, "prompt_lookup_max": 2}, "prompt_lookup_min must be >= 1 and <="),
    ({"group": {"max_match": 1}}, r"group.max_match must be an integer in \[2, 32\], got 1"),
    ({"group": {"history_depth": -1}}, "group.history_depth must be an integer >= 0"),
    ({"group": {"max_index_tokens": 10}}, "group.max_index_tokens must be an integer >= 1024"),
    ({"group": {"depth": 3}}, "unknown key.*specrollout.group: depth"),
])
def test_group_config_errors(tmp_path, kw, match):
    kw.setdefault("draft_path", _ckpt(tmp_path, "draft", 100))
    with pytest.raises(SpecRolloutConfigError, match=match):
        _cfg(**kw).validate()


def test_learner_trains_the_eagle3_head_of_eagle3_group(tmp_path):
    cfg = _cfg(method="eagle3+group", draft_path=_ckpt(tmp_path, "draft", 100), learner={"enable": True})
    cfg.validate()
    assert cfg.has_draft_model and cfg.base_method == "eagle3"
    group = _cfg(method="group")  # no draft model: nothing on disk to check, nothing to reload
    group.validate()
    assert not group.has_draft_model


# ----------------------------------------------------------------------------- draft sampling
def test_probabilistic_draft_sampling_reaches_vllm(tmp_path, monkeypatch):
    from verl_specrollout import compat

    draft = _ckpt(tmp_path, "draft", 100)

    def sent(**kw):
        return build_engine_kwargs(_cfg(draft_path=draft, **kw))["speculative_config"].get("draft_sample_method")

    assert sent() == "probabilistic"  # auto, on a vLLM that has it
    assert sent(draft_sampling="greedy") == "greedy" and sent(draft_sampling="probabilistic") == "probabilistic"
    # Group drafting and ngram: auto means greedy (copied tokens have no draft distribution).
    group = build_engine_kwargs(_cfg(method="eagle3+group", draft_path=draft))["speculative_config"]
    assert group["draft_sample_method"] == "greedy"
    assert "draft_sample_method" not in build_engine_kwargs(_cfg(method="ngram"))["speculative_config"]
    # A vLLM build without the field (none in the supported range has that): auto drafts greedily
    # and sends nothing; an explicit probabilistic is one clear error, not a silently greedy draft.
    monkeypatch.setattr(compat, "vllm_has_draft_sample_method", lambda: False)
    assert sent() is None
    with pytest.raises(SpecRolloutConfigError, match="needs a vLLM whose SpeculativeConfig has draft_sample_method"):
        sent(draft_sampling="probabilistic")


@pytest.mark.parametrize("method", ["ngram", "group", "eagle3+group", "draft_model+group"])
def test_probabilistic_draft_sampling_needs_a_draft_distribution(tmp_path, method):
    with pytest.raises(SpecRolloutConfigError, match="draft_sampling=probabilistic needs method=eagle3 or draft_model"):
        _cfg(method=method, draft_path=_ckpt(tmp_path, "draft", 100), draft_sampling="probabilistic")
    with pytest.raises(SpecRolloutConfigError, match="draft_sampling"):
        _cfg(draft_sampling="topk")


# ----------------------------------------------------------------------------- which methods run a draft model
def _vllm_methods(literal):
    import typing

    for a in typing.get_args(literal):
        yield from (_vllm_methods(a) if typing.get_origin(a) is typing.Literal else [a])


def test_runs_draft_model_agrees_with_vllm():
    """One answer for every vLLM method: a method whose drafter keeps a draft KV cache (and so runs a
    draft forward even at K=0) runs a draft model; ngram, ngram_gpu and suffix do not."""
    speculative = pytest.importorskip("vllm.config.speculative")
    from verl_specrollout.config import runs_draft_model

    sc = speculative.SpeculativeConfig

    class _Method:  # vLLM's own predicates, asked without building a SpeculativeConfig (that needs models)
        use_eagle = sc.use_eagle
        uses_draft_model = sc.uses_draft_model
        uses_extract_hidden_states = sc.uses_extract_hidden_states

        def __init__(self, method):
            self.method = method

    methods = set(_vllm_methods(speculative.SpeculativeMethod))
    assert {"ngram", "ngram_gpu", "suffix", "eagle3", "draft_model"} <= methods
    for method in methods:
        if sc.uses_draft_kv_cache(_Method(method)):
            assert runs_draft_model(method), method
    for method in ("ngram", "ngram_gpu", "suffix"):
        assert not sc.uses_draft_kv_cache(_Method(method)) and not runs_draft_model(method), method


@pytest.mark.parametrize("method, has_model", [("eagle3", True), ("draft_model", True), ("ngram", False),
                                               ("eagle3+group", True), ("draft_model+group", True), ("group", False)])
def test_has_draft_model_is_the_base_methods_answer(method, has_model):
    from verl_specrollout.config import METHODS, runs_draft_model

    assert method in METHODS
    cfg = SpecRolloutConfig.from_dict({"method": method})
    assert cfg.has_draft_model is has_model is runs_draft_model(cfg.base_method)


# ----------------------------------------------------------------------------- pydantic underneath, our messages on top
def test_validate_rechecks_in_place_and_keeps_the_sections():
    cfg = SpecRolloutConfig.from_dict({"learner": {"lr": 1}})
    learner = cfg.learner
    learner.gpu_fraction = 1  # an int set in Python: stored as a float by validate(), as from_dict does
    cfg.validate()
    assert cfg.learner is learner and type(learner.gpu_fraction) is float
    learner.placement = "moon"
    with pytest.raises(SpecRolloutConfigError, match="specrollout.learner.placement='moon' is not supported"):
        cfg.validate()


def test_several_unknown_keys_are_all_named_and_come_first():
    with pytest.raises(SpecRolloutConfigError,
                       match=r"unknown key\(s\) under specrollout.planner: modee, zzz \(did you mean mode for modee\?\)"):
        SpecRolloutConfig.from_dict({"max_k": 0, "planner": {"zzz": 1, "modee": "static"}})
    with pytest.raises(SpecRolloutConfigError, match=r"unknown key\(s\) under specrollout: 1;"):
        SpecRolloutConfig.from_dict({1: 2})


def test_nested_omegaconf_inside_a_plain_dict():
    from omegaconf import OmegaConf

    cfg = SpecRolloutConfig.from_dict({"enable": False, "planner": OmegaConf.create({"mode": "static"})})
    assert cfg.planner.mode == "static"


def test_message_shows_the_value_as_given():
    # An int for a float key is reported as the user wrote it, with the bounds.
    with pytest.raises(SpecRolloutConfigError, match=r"specrollout.learner.lr must be a number > 0, got 0 \(int\)$"):
        SpecRolloutConfig.from_dict({"learner": {"lr": 0}})
    with pytest.raises(SpecRolloutConfigError, match=r"must be a number in \(0, 1\], got inf \(float\) \(not a finite"):
        SpecRolloutConfig.from_dict({"learner": {"gpu_fraction": float("inf")}})
