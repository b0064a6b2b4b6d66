"""Batches the learner acknowledged survive its process: journaled until the buffer evicts them."""

import os

import torch

from verl_specrollout.learner.actor import SpecLearner
from verl_specrollout.learner.journal import JOURNAL_DIR, BatchJournal
from verl_specrollout.testing.testbed.toy import TOY_AUX, get_toy, toy_samples


def _learner(tmp_path, **cfg):
    torch.set_num_threads(1)
    return SpecLearner({"publish_dir": str(tmp_path / "pub"), **cfg}, get_toy()["target"], TOY_AUX,
                       batch_size=2, num_steps=1, heldout_every=1000)


def _ids(samples):
    return sorted(tuple(s["input_ids"].tolist()) for s in samples)


def test_a_restarted_learner_gets_back_every_acknowledged_sample(tmp_path):
    first = _learner(tmp_path)
    batch_a, batch_b = toy_samples(3, seed=1), toy_samples(2, seed=2)
    assert first.add_batch(batch_a, 1) == 3 and first.add_batch(batch_b, 2) == 2
    del first  # the process dies: nothing was published or saved
    second = _learner(tmp_path)
    assert _ids(second.buffer.sample(5, newest_first=True)) == _ids(batch_a + batch_b)
    assert second.train(1)["trained"] == 1


def test_evicted_batches_leave_the_journal(tmp_path):
    per_sample = sum(v.numel() * v.element_size() for v in toy_samples(1)[0].values())
    learner = _learner(tmp_path, buffer_bytes=max(1 << 20, 3 * per_sample))
    journal_dir = os.path.join(learner.state.directory, JOURNAL_DIR)
    n = (1 << 20) // per_sample + 8  # more than the buffer holds
    for i in range(0, n, 4):
        learner.add_batch(toy_samples(4, seed=100 + i), i)
    files = os.listdir(journal_dir)
    on_disk = sum(os.path.getsize(os.path.join(journal_dir, f)) for f in files)
    # at most the buffer's cap plus one batch (and the files' headers) stays on disk
    assert on_disk <= learner.buffer.cap_bytes + 4 * per_sample + 4096 * len(files), (on_disk, len(files))
    assert learner.buffer.dropped > 0 and len(files) < n // 4


def test_an_unreadable_journal_file_is_skipped(tmp_path, caplog):
    journal = BatchJournal(str(tmp_path / "j"))
    good = journal.record(toy_samples(2, seed=5))
    bad = journal.record(toy_samples(1, seed=6))
    with open(journal._path(bad), "wb") as f:
        f.write(b"not a safetensors file")
    with caplog.at_level("WARNING"):
        got = list(BatchJournal(str(tmp_path / "j")).replay())
    assert [b for b, _ in got] == [good] and len(got[0][1]) == 2
    assert "skipping unreadable journaled batch" in caplog.text
