import torch

from verl_specrollout.capture.samples import sample_nbytes
from verl_specrollout.learner.buffer import ReplayBuffer


def _s(n, tag=0):
    return {"input_ids": torch.full((n,), tag, dtype=torch.int32), "aux": torch.zeros(n, 8, dtype=torch.bfloat16),
            "final_hidden": torch.zeros(n, 4, dtype=torch.bfloat16), "loss_mask": torch.ones(n, dtype=torch.uint8)}


def test_bytes_cap_and_drop_oldest():
    one = sample_nbytes(_s(10))
    buf = ReplayBuffer(cap_bytes=3 * one)
    for i in range(5):
        assert buf.add(_s(10, i))
        assert buf.bytes <= buf.cap_bytes
    assert len(buf) == 3 and buf.dropped == 2 and buf.dropped_bytes == 2 * one
    kept = sorted(int(s["input_ids"][0]) for s in buf.sample(3))
    assert kept == [2, 3, 4]  # the oldest two went first
    assert [int(s["input_ids"][0]) for s in buf.sample(2, newest_first=True)] == [3, 4]


def test_oversized_sample_rejected_and_counted():
    buf = ReplayBuffer(cap_bytes=sample_nbytes(_s(10)))
    assert buf.add(_s(10))
    assert not buf.add(_s(100))
    assert len(buf) == 1 and buf.dropped == 1
    st = buf.stats()
    assert st["buffer_added"] == 2 and st["buffer_dropped"] == 1 and st["buffer_bytes"] == buf.bytes


def test_sample_with_replacement_when_small():
    buf = ReplayBuffer(cap_bytes=1 << 20)
    buf.add(_s(4))
    assert len(buf.sample(5)) == 5
    assert ReplayBuffer(1 << 20).sample(3) == []
