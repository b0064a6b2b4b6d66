"""A reduced-vocabulary EAGLE-3 head we save (draft_vocab_size < vocab_size, own lm_head, d2t) loads
in vLLM next to a tiny target and drafts, and our live reload swaps in another such head.

Random weights: this checks that vLLM takes our names and shapes (its draft_id_to_target_id and
lm_head hold exactly what we wrote), also under the speculators library's ``layers.0.*`` names, not
acceptance (test_reload_live.py does that).
"""

import pytest
import torch

pytestmark = pytest.mark.integration

DRAFT_VOCAB = 96


def _reduced_head(seed):
    from verl_specrollout.draft.eagle3 import Eagle3Config, Eagle3Draft
    from verl_specrollout.testing.testbed.toy import TOY_AUX, toy_target_config

    torch.manual_seed(seed)
    cfg = Eagle3Config.from_target_config(toy_target_config(), TOY_AUX, draft_vocab_size=DRAFT_VOCAB,
                                          own_lm_head=True)
    draft = Eagle3Draft(cfg)
    ids = torch.sort(torch.randperm(cfg.vocab_size)[:DRAFT_VOCAB]).values
    draft.d2t.copy_(ids - torch.arange(DRAFT_VOCAB))
    return draft


def _engine_head(self):
    """Runs in the vLLM worker: the live draft's vocabulary map and lm_head."""
    from verl_specrollout.vllm_adapter.draft_reload import _get_draft_model

    model = _get_draft_model(self)
    # vLLM pads the lm_head's rows (to a multiple of 64); the first draft_vocab_size are ours.
    lm_head = model.lm_head.weight.detach()[:DRAFT_VOCAB].cpu().clone()
    return model.draft_id_to_target_id.detach().cpu().clone(), lm_head


def _generate(llm):
    from vllm import SamplingParams, TokensPrompt

    from verl_specrollout.testing.testbed.toy import toy_prompts
    from verl_specrollout.vllm_adapter.spec_counters import read_counters

    c0 = read_counters(llm)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in toy_prompts(4, seed=7)],
                        SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True), use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == 16 for o in outs)
    return read_counters(llm) - c0


def test_vllm_loads_and_reloads_a_reduced_vocab_head(tmp_path):
    from verl_specrollout.config import SpecRolloutConfig
    from safetensors.torch import save_file

    from verl_specrollout.draft.eagle3 import save_vllm_checkpoint, vllm_state_dict
    from verl_specrollout.testing.testbed.toy import build_toy_target
    from verl_specrollout.vllm_adapter.draft_reload import DraftReloader
    from verl_specrollout.vllm_adapter.offline_engine import make_llm

    torch.set_num_threads(2)
    target = build_toy_target(str(tmp_path / "target"), sft_steps=0)  # random weights: seconds
    heads = {v: _reduced_head(seed=v) for v in (1, 2)}
    dirs = {v: save_vllm_checkpoint(h, str(tmp_path / f"v{v}")) for v, h in heads.items()}
    assert not torch.equal(heads[1].d2t, heads[2].d2t)

    spec = SpecRolloutConfig.from_dict({"enable": True, "method": "eagle3", "draft_path": dirs[1], "max_k": 3,
                                        "planner": {"mode": "static"}})
    llm = make_llm(target, spec, skip_tokenizer_init=True, max_model_len=256, kv_cache_memory_bytes=256 << 20)

    d2t, lm_head = llm.collective_rpc(_engine_head)[0]
    assert torch.equal(d2t, heads[1].d2t) and torch.equal(lm_head, heads[1].lm_head.weight.detach())
    assert _generate(llm).num_draft_tokens > 0

    rel = DraftReloader.for_llm(llm, initial_version=1)
    assert rel.load(dirs[2], 2) == 2, rel.last_result
    assert rel.last_result["ok"] and "lm_head.weight" not in rel.last_result["skipped"]
    d2t, lm_head = llm.collective_rpc(_engine_head)[0]
    assert torch.equal(d2t, heads[2].d2t) and torch.equal(lm_head, heads[2].lm_head.weight.detach())
    assert _generate(llm).num_draft_tokens > 0

    # The speculators layout's names (layers.0.* for midlayer.*) reload too: vLLM maps them itself.
    spec_dir = tmp_path / "speculators"
    spec_dir.mkdir()
    sd = {k.replace("midlayer.", "layers.0."): v for k, v in vllm_state_dict(heads[1]).items()}
    save_file(sd, str(spec_dir / "model.safetensors"))
    assert rel.load(str(spec_dir), 3) == 3, rel.last_result
    d2t, lm_head = llm.collective_rpc(_engine_head)[0]
    assert torch.equal(d2t, heads[1].d2t) and torch.equal(lm_head, heads[1].lm_head.weight.detach())
