"""Build (or reuse the cached) tiny testbed and run its drafts in the real vLLM CPU engine."""

import math
import os

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def testbed():
    from verl_specrollout.testing.testbed import build_testbed

    return build_testbed("tiny")


def test_testbed_artifacts(testbed):
    for d in (testbed.tokenizer_dir, testbed.target_dir, testbed.eagle3_dir,
              testbed.draft_lm_dir, testbed.data_dir):
        assert os.path.isdir(d), d
    assert os.path.exists(testbed.train_parquet) and os.path.exists(testbed.test_parquet)
    assert os.path.exists(os.path.join(testbed.target_dir, "model.safetensors"))
    assert os.path.exists(os.path.join(testbed.eagle3_dir, "model.safetensors"))
    rs = testbed.stats["target_response_stats"]
    # peaked but not deterministic at T=1
    assert 0.6 < rs["mean_max_prob"] < 0.99, rs
    assert rs["mean_entropy"] > 0.02, rs


@pytest.mark.parametrize("method", ["eagle3", "draft_model"])
def test_acceptance_t0(testbed, method):
    from verl_specrollout.testing.testbed.measure import measure_acceptance

    r = measure_acceptance(testbed, method, k=4, temperature=0.0, n_prompts=32)
    assert r["num_drafts"] > 0
    assert not math.isnan(r["mean_acceptance_length"])
    assert r["mean_acceptance_length"] > 1.5, r
    assert len(r["per_position_acceptance"]) == 4
    # generated text parses as task output
    assert sum("####" in t for t in r["texts"]) >= len(r["texts"]) // 2
