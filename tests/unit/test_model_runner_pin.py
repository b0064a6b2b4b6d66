"""vLLM 0.29-0.31's V2 model runner drafts max K whatever the planner scheduled: pin V1 there."""

from verl_specrollout.vllm_adapter.engine_kwargs import pin_model_runner


def test_pins_v1_where_v2_ignores_the_scheduled_k():
    for version in ("0.29.0", "0.30.1", "0.31.0+cpu"):
        env = {}
        assert pin_model_runner(env, version) is not None
        assert env == {"VLLM_USE_V2_MODEL_RUNNER": "0"}


def test_leaves_versions_that_follow_k_alone():
    for version in ("0.32.0", "0.33.1"):
        env = {}
        assert pin_model_runner(env, version) is None and env == {}


def test_respects_the_users_choice_but_says_what_it_costs(caplog):
    env = {"VLLM_USE_V2_MODEL_RUNNER": "1"}
    with caplog.at_level("WARNING"):
        msg = pin_model_runner(env, "0.30.0")
    assert env == {"VLLM_USE_V2_MODEL_RUNNER": "1"} and "draft cost" in msg and "draft cost" in caplog.text
    env = {"VLLM_USE_V2_MODEL_RUNNER": "0"}
    assert pin_model_runner(env, "0.30.0") is None
