"""The expanded tiny target in the real vLLM CPU engine: the same greedy text as the original, and
the widened EAGLE-3 head accepts as much on it as the original head on the original (T=0)."""

import dataclasses

import pytest

pytestmark = pytest.mark.integration

N_PROMPTS, MAX_TOKENS = 16, 96


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from verl_specrollout.testing.testbed import build_testbed
    from verl_specrollout.testing.testbed.expand import ExpandShape, expand_checkpoint, expand_eagle3_checkpoint

    tiny = build_testbed("tiny")
    out = tmp_path_factory.mktemp("expanded")
    shape = ExpandShape(hidden_size=384, num_attention_heads=8, num_key_value_heads=4, intermediate_size=768,
                        num_hidden_layers=7)
    info = expand_checkpoint(tiny.target_dir, str(out / "target"), shape)
    expand_eagle3_checkpoint(tiny.eagle3_dir, str(out / "eagle3"), tiny.target_dir, shape, info["plan"])
    return tiny, dataclasses.replace(tiny, target_dir=str(out / "target"), eagle3_dir=str(out / "eagle3"))


def _greedy_texts(testbed) -> list:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from verl_specrollout.testing.testbed.measure import make_llm, task_prompts

    llm = make_llm(testbed, None)
    prompts = [TokensPrompt(prompt_token_ids=p) for p, _ in task_prompts(testbed, N_PROMPTS)]
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS), use_tqdm=False)
    return [o.outputs[0].text for o in outs]


def test_expanded_target_greedy_text_is_the_original(pair):
    original, expanded = pair
    a, b = _greedy_texts(original), _greedy_texts(expanded)
    assert sum(x == y for x, y in zip(a, b)) == len(a), [(x, y) for x, y in zip(a, b) if x != y]


def test_mapped_eagle3_head_accepts_the_same(pair):
    from verl_specrollout.testing.testbed.measure import measure_acceptance

    original, expanded = pair
    r0, r1 = (measure_acceptance(tb, "eagle3", k=4, temperature=0.0, n_prompts=N_PROMPTS, max_tokens=MAX_TOKENS)
              for tb in pair)
    assert r0["num_drafts"] > 0 and r0["mean_acceptance_length"] > 1.5, r0
    # T=0: the same tokens are drafted and verified, so counts agree up to a rare rounding tie
    assert abs(r1["mean_acceptance_length"] - r0["mean_acceptance_length"]) < 0.05, (r0, r1)
    assert r1["texts"] == r0["texts"]
