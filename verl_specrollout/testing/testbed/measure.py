"""Measure a draft's mean acceptance length on the testbed with the real vLLM engine."""

from __future__ import annotations

import gc


def _counters(llm) -> dict:
    from vllm.v1.metrics.reader import Counter, Vector

    out = {"per_pos": []}
    for m in llm.get_metrics():
        if isinstance(m, Counter) and m.name.startswith("vllm:spec_decode_num"):
            out[m.name] = out.get(m.name, 0) + m.value
        elif isinstance(m, Vector) and m.name == "vllm:spec_decode_num_accepted_tokens_per_pos":
            vals = list(m.values)
            acc = out["per_pos"]
            acc += [0] * (len(vals) - len(acc))
            for i, v in enumerate(vals):
                acc[i] += v
    return out


def task_prompts(testbed, n_prompts: int, split: str = "test"):
    """(prompt token ids, ground truth) for the first ``n_prompts`` rows of a parquet split."""
    import pandas as pd
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(testbed.tokenizer_dir)
    df = pd.read_parquet(testbed.test_parquet if split == "test" else testbed.train_parquet)
    out = []
    for _, row in df.head(n_prompts).iterrows():
        text = tok.apply_chat_template(list(row["prompt"]), add_generation_prompt=True,
                                       tokenize=False)
        out.append((tok.encode(text, add_special_tokens=False),
                    str(row["reward_model"]["ground_truth"])))
    return out


def make_llm(testbed, method: str | None, k: int = 4, draft_sampling: str = "auto", **llm_kwargs):
    """In-process vLLM engine on the testbed target, with ``method`` in
    {"eagle3", "draft_model", None}; built through the same kwargs path as veRL's server."""
    from verl_specrollout.config import SpecRolloutConfig
    from verl_specrollout.vllm_adapter.offline_engine import make_llm as _make_llm

    if method not in (None, "eagle3", "draft_model"):
        raise ValueError(f"unknown method {method!r}")
    spec = None
    if method is not None:
        draft = testbed.eagle3_dir if method == "eagle3" else testbed.draft_lm_dir
        spec = SpecRolloutConfig.from_dict({"enable": True, "method": method, "draft_path": draft,
                                            "max_k": k, "planner": {"mode": "static"},
                                            "draft_sampling": draft_sampling})
    llm_kwargs.setdefault("max_num_seqs", 64)
    return _make_llm(testbed.target_dir, spec, **llm_kwargs)


def measure_acceptance(testbed, method: str = "eagle3", k: int = 4, temperature: float = 0.0,
                       n_prompts: int = 32, max_tokens: int = 160, llm=None, draft_sampling: str = "auto",
                       **llm_kwargs) -> dict:
    """Mean acceptance length (1 + accepted / drafts) of ``method`` at ``k`` draft tokens.

    Creates (and frees) an in-process engine unless ``llm`` is given; counters are read as
    deltas around the generate call, so a shared engine is fine.
    """
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from .reward import compute_score
    from .task import DATA_SOURCE

    own = llm is None
    if own:
        llm = make_llm(testbed, method, k, draft_sampling, **llm_kwargs)
    try:
        prompts = task_prompts(testbed, n_prompts)
        sp = SamplingParams(temperature=temperature, max_tokens=max_tokens)
        before = _counters(llm)
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p, _ in prompts], sp,
                            use_tqdm=False)
        after = _counters(llm)
    finally:
        if own:
            del llm
            gc.collect()
    d = {key: after.get(key, 0) - before.get(key, 0)
         for key in ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens",
                     "vllm:spec_decode_num_accepted_tokens")}
    per_pos_b = before["per_pos"] + [0] * (len(after["per_pos"]) - len(before["per_pos"]))
    per_pos = [a - b for a, b in zip(after["per_pos"], per_pos_b)]
    drafts = d["vllm:spec_decode_num_drafts"]
    texts = [o.outputs[0].text for o in outs]
    acc = sum(compute_score(DATA_SOURCE, t, gt) for t, (_, gt) in zip(texts, prompts))
    return {
        "method": method, "k": k, "temperature": temperature, "n_prompts": len(prompts),
        "mean_acceptance_length": 1.0 + d["vllm:spec_decode_num_accepted_tokens"] / drafts
        if drafts else float("nan"),
        "num_drafts": drafts,
        "num_draft_tokens": d["vllm:spec_decode_num_draft_tokens"],
        "num_accepted_tokens": d["vllm:spec_decode_num_accepted_tokens"],
        "per_position_acceptance": [v / drafts for v in per_pos] if drafts else [],
        "num_output_tokens": sum(len(o.outputs[0].token_ids) for o in outs),
        "accuracy": acc / max(1, len(prompts)),
        "texts": texts,
    }


def hf_greedy(model_dir: str, ids, n: int) -> list:
    """The next ``n`` greedy tokens of a Hugging Face causal LM after ``ids``, one full forward per
    token (no KV cache): the plain reference a cached or remote drafter must reproduce."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = list(ids)
    with torch.inference_mode():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[-n:]
