"""EngineCapture on a veRL-shaped micro-batch (jagged input_ids / position_ids, padded response_mask)."""
import pytest
import torch

from verl_specrollout.capture.verl_capture import EngineCapture, response_info

from capture_rig import FakeEngine, tiny_llama


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama()


def _micro_batch(seqs, max_resp):
    from tensordict import TensorDict

    full = [torch.cat([p, r]) for p, r in seqs]
    ids = torch.nested.as_nested_tensor(full, layout=torch.jagged)
    pos = torch.nested.as_nested_tensor([torch.arange(len(f)) for f in full], layout=torch.jagged)
    rmask = torch.zeros(len(seqs), max_resp)
    for i, (_, r) in enumerate(seqs):
        rmask[i, : len(r)] = 1
    rmask[0, 1] = 0  # e.g. a tool-output token inside a response
    return TensorDict({"input_ids": ids, "position_ids": pos, "response_mask": rmask}, batch_size=[len(seqs)])


def test_engine_capture_end_to_end(tiny):
    g = torch.Generator().manual_seed(2)
    seqs = [(torch.randint(3, 64, (4,), generator=g), torch.randint(3, 64, (5,), generator=g)),
            (torch.randint(3, 64, (6,), generator=g), torch.randint(3, 64, (3,), generator=g))]
    mb = _micro_batch(seqs, 6)
    cu, lens, rows = response_info(mb)
    assert cu == [0, 9, 18] and lens == [5, 3]  # right-padded responses, last masked-in token + 1
    got = []
    eng = FakeEngine(tiny)
    cap = EngineCapture(eng, [1, 2], lambda s, step: got.append((s, step)), policy_step=lambda: 11)
    logits = eng.forward_step(mb, None, forward_only=True)
    assert got == []  # the step's samples are shipped once, when the step ends
    counts = cap.end_step()
    assert len(got) == 1 and got[0][1] == 11
    assert counts["kept_sequences"] == 2 and counts["dropped_sequences"] == 0 and counts["kept_tokens"] == 10
    samples = got[0][0]
    assert [s["input_ids"].numel() for s in samples] == [6, 4]
    assert samples[0]["loss_mask"].tolist() == [1, 0, 1, 1, 1, 0]  # token 2 of response 0 masked out
    # final hidden @ lm_head reproduces the engine's own logits at the kept rows
    torch.testing.assert_close(tiny.lm_head(samples[1]["final_hidden"].float()), logits[0, 14:18],
                               atol=0.05, rtol=0.05)
    # training forwards (forward_only=False) are never captured
    eng.forward_step(mb, None, forward_only=False)
    assert cap.end_step() is None and len(got) == 1
    cap.remove()
    eng.forward_step(mb, None, forward_only=True)
    assert cap.end_step() is None and len(got) == 1
