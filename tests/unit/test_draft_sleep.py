"""What a level-2 sleep would take from the draft is kept on the host and put back (no vLLM).

A toy draft with vLLM's shapes of the problem: a weight the checkpoint carries (``model.fc.weight``),
an integer parameter it does not (vLLM 0.24's ``draft_id_to_target_id``), a non-persistent buffer
(the head's own RoPE ``cos_sin_cache``) and the target's embedding, shared. Its ``load_weights``
maps checkpoint names the way vLLM's EAGLE-3 loader does (``d2t``, a ``model.`` prefix).
"""

import pytest
import torch
from safetensors.torch import save_file

from verl_specrollout.vllm_adapter.draft_reload import keep_draft_in_worker, reload_draft_in_worker
from verl_specrollout.vllm_adapter.draft_sleep import KEEP_ATTR, written_by_load

VOCAB, HIDDEN = 16, 8


class ToyTarget(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.embed_tokens = torch.nn.Embedding(VOCAB, HIDDEN)
        self.lm_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)


class ToyDraft(torch.nn.Module):
    def __init__(self, target, reads_values=False):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.embed_tokens = target.model.embed_tokens  # shared with the target, as vLLM does
        self.model.fc = torch.nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.model.rotary = torch.nn.Module()
        self.model.rotary.register_buffer("cos_sin_cache", torch.randn(32, 4), persistent=False)
        self.draft_id_to_target_id = torch.nn.Parameter(torch.arange(VOCAB) % 3, requires_grad=False)
        self.reads_values = reads_values

    def load_weights(self, weights):
        params = dict(self.named_parameters())
        for name, t in weights:
            if self.reads_values:
                float(t.float().sum())  # a loader that needs values: the dry run cannot run it
            name = name.replace("d2t", "draft_id_to_target_id")
            if name.startswith("fc."):
                name = "model." + name
            params[name].data.copy_(t)


class Runner:
    def __init__(self, target, draft):
        self.target, self.draft = target, draft

    def get_model(self):
        return self.target

    def get_draft_model(self):
        return self.draft


class Worker:
    """vLLM's Worker as the reload sees it; ``vllm_saves_draft_buffers``: the 0.27+ attribute."""

    def __init__(self, reads_values=False, vllm_saves_draft_buffers=False):
        torch.manual_seed(0)
        self.target = ToyTarget()
        self.draft = ToyDraft(self.target, reads_values)
        self.model_runner = Runner(self.target, self.draft)
        if vllm_saves_draft_buffers:
            self._sleep_saved_draft_buffers = {}


def _state(module):
    return {n: t.detach().clone() for n, t in list(module.named_parameters()) + list(module.named_buffers())}


def _discard(worker):
    """What a level-2 sleep + wake leaves in the draft: garbage in every tensor not the target's."""
    with torch.no_grad():
        worker.draft.model.fc.weight.normal_()
        worker.draft.model.rotary.cos_sin_cache.normal_()
        worker.draft.draft_id_to_target_id.fill_(1 << 40)


@pytest.fixture
def ckpt(tmp_path):
    def write(name="v1", **extra):
        d = tmp_path / name
        d.mkdir()
        torch.manual_seed(1)
        save_file({"fc.weight": torch.randn(HIDDEN, HIDDEN), **extra}, str(d / "model.safetensors"))
        return str(d)
    return write


def test_dry_run_finds_what_the_checkpoint_writes_and_writes_nothing(ckpt):
    w = Worker()
    before = _state(w.draft)
    weights = [("fc.weight", torch.full((HIDDEN, HIDDEN), 7.0)), ("d2t", torch.zeros(VOCAB, dtype=torch.long))]
    assert written_by_load(w.draft, weights) == {"model.fc.weight", "draft_id_to_target_id"}
    after = _state(w.draft)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert all(t.device.type == "cpu" for t in after.values())


def test_restore_after_sleep_brings_back_every_tensor_the_checkpoint_lacks(ckpt):
    path = ckpt()
    w = Worker()
    summary = keep_draft_in_worker(w, path)
    # Kept: the integer parameter and the buffer; not the checkpoint's weight, never the shared embedding.
    assert summary["names"] == ["draft_id_to_target_id", "model.rotary.cos_sin_cache"], summary
    assert summary["kept_bytes"] == VOCAB * 8 + 32 * 4 * 4 and summary["dry_run"] == "ok", summary
    assert reload_draft_in_worker(w, path, 0)["ok"]  # the engine's state: the checkpoint loaded
    before = _state(w.draft)
    embed = w.target.model.embed_tokens.weight.detach().clone()

    _discard(w)
    res = reload_draft_in_worker(w, path, 0, restore=True)
    assert res["ok"] and sorted(res["restored"]) == summary["names"] and res["lost"] == [], res
    after = _state(w.draft)
    assert all(torch.equal(before[n], after[n]) for n in before), [n for n in before if not torch.equal(before[n], after[n])]
    assert torch.equal(w.target.model.embed_tokens.weight, embed)


def test_restore_with_the_kept_copy_only_is_what_the_old_restore_lost(ckpt):
    """Without the host copy (the restore before this module existed) the integer map and the
    buffer stay garbage: what test_sleep_wake_draft shows in a real engine."""
    path = ckpt()
    w = Worker()
    before = _state(w.draft)
    _discard(w)
    res = reload_draft_in_worker(w, path, 0, restore=True)  # nothing was kept before the sleep
    assert res["ok"] and res["restored"] == [] and sorted(res["lost"]) == ["draft_id_to_target_id",
                                                                            "model.rotary.cos_sin_cache"]
    assert not torch.equal(w.draft.draft_id_to_target_id, before["draft_id_to_target_id"])


def test_vllm_that_saves_draft_buffers_keeps_them_itself(ckpt):
    w = Worker(vllm_saves_draft_buffers=True)
    summary = keep_draft_in_worker(w, ckpt())
    assert summary["names"] == ["draft_id_to_target_id"] and summary["vllm_saves_draft_buffers"], summary


def test_the_checkpoint_wins_over_the_kept_copy(ckpt):
    """A loader the dry run cannot follow: every buffer and integer tensor is kept (floats are taken
    as the checkpoint's), and a checkpoint that carries one of them overrides the copy."""
    d2t = torch.arange(VOCAB) % 5
    path = ckpt(d2t=d2t)
    w = Worker(reads_values=True)
    summary = keep_draft_in_worker(w, path)
    assert summary["dry_run"].startswith("failed") and summary["names"] == ["draft_id_to_target_id",
                                                                            "model.rotary.cos_sin_cache"]
    _discard(w)
    res = reload_draft_in_worker(w, path, 3, restore=True)
    assert res["ok"] and torch.equal(w.draft.draft_id_to_target_id, d2t), res


def test_a_failed_restore_still_puts_the_kept_tensors_back(ckpt, tmp_path):
    w = Worker()
    keep_draft_in_worker(w, ckpt())
    before = _state(w.draft)
    _discard(w)
    res = reload_draft_in_worker(w, str(tmp_path / "missing"), 5, restore=True)
    assert not res["ok"] and "draft_id_to_target_id" in res["restored"]
    assert torch.equal(w.draft.draft_id_to_target_id, before["draft_id_to_target_id"])


def test_a_live_reload_keeps_first_and_a_second_keep_adds_nothing(ckpt):
    w = Worker()
    assert KEEP_ATTR not in w.draft.__dict__
    assert reload_draft_in_worker(w, ckpt(), 1)["ok"]  # first touch: a reload before any sleep
    kept = w.draft.__dict__[KEEP_ATTR]["tensors"]
    assert sorted(kept) == ["draft_id_to_target_id", "model.rotary.cos_sin_cache"]
    first = {n: t.data_ptr() for n, t in kept.items()}
    keep_draft_in_worker(w, None)  # no checkpoint known: nothing new (floats are the checkpoint's)
    assert {n: t.data_ptr() for n, t in kept.items()} == first
