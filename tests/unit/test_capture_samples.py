"""Capture on a packed (1, nnz) forward == an unpacked HF forward, with EAGLE alignment."""
import pytest
import torch

from verl_specrollout.capture.hooks import HiddenStateCapture
from verl_specrollout.capture.samples import build_samples, gather_index, response_windows


@pytest.fixture(scope="module")
def tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).eval()


def test_windows_and_mask_alignment():
    # two sequences: prompt 3 + response 4, prompt 2 + response 3
    w = response_windows([0, 7, 12], [4, 3], context=1)
    assert w == [(2, 3, 7), (8, 9, 12)]
    idx = gather_index(w)
    assert idx.tolist() == [2, 3, 4, 5, 6, 8, 9, 10, 11]
    ids = torch.arange(12)
    aux = torch.arange(12).float()[:, None].repeat(1, 6)[idx]
    fin = torch.arange(12).float()[:, None].repeat(1, 2)[idx]
    rm = [torch.tensor([1, 1, 0, 1]), None]
    s = build_samples(ids, w, aux, fin, rm, gathered=True, policy_step=7)
    assert len(s) == 2
    assert s[0]["input_ids"].tolist() == [2, 3, 4, 5, 6]
    assert s[0]["aux"][:, 0].float().tolist() == [2, 3, 4, 5, 6]
    # loss_mask[p] = response mask of token p+1; last position 0
    assert s[0]["loss_mask"].tolist() == [1, 1, 0, 1, 0]
    assert s[1]["loss_mask"].tolist() == [1, 1, 1, 0]
    assert s[0]["aux"].dtype == torch.bfloat16 and int(s[0]["policy_step"]) == 7


def test_no_response_or_no_prompt_skipped():
    w = response_windows([0, 3, 6], [0, 3], context=1)
    assert w == [None, None]


def test_packed_capture_matches_unpacked_forward(tiny):
    aux_ids = [0, 1, 2]
    g = torch.Generator().manual_seed(1)
    seqs = [(torch.randint(3, 64, (5,), generator=g), torch.randint(3, 64, (6,), generator=g)),
            (torch.randint(3, 64, (3,), generator=g), torch.randint(3, 64, (4,), generator=g)),
            (torch.randint(3, 64, (7,), generator=g), torch.randint(3, 64, (2,), generator=g))]
    full = [torch.cat([p, r]) for p, r in seqs]
    cu = [0]
    for f in full:
        cu.append(cu[-1] + len(f))
    ids = torch.cat(full)[None]
    pos = torch.cat([torch.arange(len(f)) for f in full])[None]
    windows = response_windows(cu, [len(r) for _, r in seqs], context=1)
    cap = HiddenStateCapture(tiny, aux_ids, dtype=torch.float32)
    cap.arm(gather_index(windows))
    with torch.no_grad():
        tiny(input_ids=ids, position_ids=pos, use_cache=False)
    aux, fin = cap.collect()
    # hooks are inert when not armed
    with torch.no_grad():
        tiny(input_ids=ids, position_ids=pos, use_cache=False)
    assert cap._final is None
    cap.remove()
    samples = build_samples(ids[0], windows, aux, fin, None, gathered=True, dtype=torch.float32)
    assert len(samples) == 3
    for (p, r), f, s in zip(seqs, full, samples):
        with torch.no_grad():
            out = tiny(input_ids=f[None], output_hidden_states=True)
        start = len(p) - 1
        ref_aux = torch.cat([out.hidden_states[L][0, start:] for L in aux_ids], -1)
        ref_fin = out.hidden_states[-1][0, start:]  # HF: last entry is post-norm
        assert s["input_ids"].tolist() == f[start:].tolist()
        torch.testing.assert_close(s["aux"], ref_aux, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(s["final_hidden"], ref_fin, atol=1e-4, rtol=1e-4)
        # lm_head(final_hidden[p]) is the target's prediction of x[p+1]
        torch.testing.assert_close(tiny.lm_head(s["final_hidden"]), out.logits[0, start:], atol=1e-4, rtol=1e-4)
        assert s["loss_mask"].tolist() == [1] * len(r) + [0]


def test_capture_rejects_ulysses():
    from verl_specrollout.capture.verl_capture import CaptureUnsupported, check_supported

    class E:
        ulysses_sequence_parallel_size = 2
        use_remove_padding = True

    with pytest.raises(CaptureUnsupported, match="Ulysses"):
        check_supported(E())


def test_samples_own_compact_storage():
    """Shipping cost: a sample must not be a view of the captured batch, or pickling it (what
    ray.put does) serialises the whole batch once per sample."""
    import pickle

    from verl_specrollout.capture.samples import sample_nbytes

    cu = [0]
    for _ in range(16):
        cu.append(cu[-1] + 20)
    w = response_windows(cu, [12] * 16, context=1)
    idx = gather_index(w)
    aux = torch.randn(cu[-1], 48).to(torch.bfloat16)[idx]
    fin = torch.randn(cu[-1], 16).to(torch.bfloat16)[idx]
    samples = build_samples(torch.arange(cu[-1]), w, aux, fin, None, gathered=True)
    assert len(samples) == 16
    for s in samples:
        for k in ("aux", "final_hidden", "input_ids"):
            assert s[k].untyped_storage().nbytes() == s[k].numel() * s[k].element_size(), k
    payload = sum(sample_nbytes(s) for s in samples)
    assert len(pickle.dumps(samples, protocol=5)) < 2 * payload + 64 * 1024
