"""Capture never breaks the policy's forward; what it cannot serve is refused at start-up."""
import logging

import pytest
import torch

from verl_specrollout.capture import verl_capture
from verl_specrollout.capture.verl_capture import CaptureUnsupported, EngineCapture, install_capture

from capture_rig import FakeEngine, tiny_llama

AUX = [1, 2]


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama()


def micro_batch(seed, three_d_positions=False):
    from tensordict import TensorDict

    g = torch.Generator().manual_seed(seed)
    seqs = [(torch.randint(3, 64, (4,), generator=g), torch.randint(3, 64, (5,), generator=g)),
            (torch.randint(3, 64, (3,), generator=g), torch.randint(3, 64, (6,), generator=g))]
    full = [torch.cat([p, r]) for p, r in seqs]
    ids = torch.nested.as_nested_tensor(full, layout=torch.jagged)
    if three_d_positions:  # (nnz, 3) per sequence, as multimodal rope would give
        pos = torch.nested.as_nested_tensor([torch.arange(len(f))[:, None].repeat(1, 3) for f in full],
                                            layout=torch.jagged)
    else:
        pos = torch.nested.as_nested_tensor([torch.arange(len(f)) for f in full], layout=torch.jagged)
    rmask = torch.ones(len(seqs), 6)
    rmask[0, 5] = 0
    return TensorDict({"input_ids": ids, "position_ids": pos, "response_mask": rmask}, batch_size=[len(seqs)])


def plain_forward(tiny, mb):
    return FakeEngine(tiny).forward_step(mb, None, True)


def capture_warnings(caplog):
    return [r for r in caplog.records if r.name == verl_capture.logger.name and r.levelno >= logging.WARNING]


def test_build_failure_returns_the_forward_output_logs_once_and_skips_the_step(tiny, monkeypatch, caplog):
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise ValueError("boom while building samples")

    monkeypatch.setattr(verl_capture, "build_samples", broken)
    step, got = [1], []
    eng = FakeEngine(tiny)
    cap = EngineCapture(eng, AUX, lambda s, p: got.append(s), policy_step=lambda: step[0])
    caplog.set_level(logging.WARNING)
    for seed in range(3):
        mb = micro_batch(seed)
        out = eng.forward_step(mb, None, forward_only=True)
        assert torch.equal(out, plain_forward(tiny, mb))  # the forward's own output, untouched
        assert not cap.capture._armed
    assert len(calls) == 1  # off for the rest of the step after the first failure
    logged = capture_warnings(caplog)
    assert len(logged) == 1 and "boom while building samples" in logged[0].getMessage()
    assert "policy step 1" in logged[0].getMessage() and logged[0].exc_info is not None
    counts = cap.end_step()
    assert got == [] and counts["skipped_microbatches"] == 3 and counts["kept_sequences"] == 0
    assert cap.errors == 1

    # the next step captures again; the same failure is counted, not logged again
    step[0] = 2
    eng.forward_step(micro_batch(0), None, forward_only=True)
    assert len(calls) == 2 and len(capture_warnings(caplog)) == 1 and cap.errors == 2
    monkeypatch.undo()
    step[0] = 3
    eng.forward_step(micro_batch(0), None, forward_only=True)
    assert cap.end_step()["kept_sequences"] == 2 and len(got) == 1


def test_hooks_that_did_not_run_skip_the_step(tiny, caplog):
    eng = FakeEngine(tiny)
    cap = EngineCapture(eng, AUX, lambda s, p: None, policy_step=lambda: 1)
    cap.capture.collect = lambda: (_ for _ in ()).throw(RuntimeError("hooked modules did not run"))
    caplog.set_level(logging.WARNING)
    mb = micro_batch(4)
    assert torch.equal(eng.forward_step(mb, None, forward_only=True), plain_forward(tiny, mb))
    assert len(capture_warnings(caplog)) == 1 and not cap.capture._armed


def test_a_hook_error_stays_out_of_the_policys_forward(tiny, caplog):
    eng = FakeEngine(tiny)
    cap = EngineCapture(eng, AUX, lambda s, p: None, policy_step=lambda: 1)
    cap.capture._keep = lambda out: (_ for _ in ()).throw(RuntimeError("index_select ran out of memory"))
    caplog.set_level(logging.WARNING)
    mb = micro_batch(6)
    assert torch.equal(eng.forward_step(mb, None, forward_only=True), plain_forward(tiny, mb))
    logged = capture_warnings(caplog)
    assert len(logged) == 1 and "index_select ran out of memory" in logged[0].getMessage()
    assert cap.end_step()["skipped_microbatches"] == 1


def test_per_batch_3d_positions_are_a_logged_skip(tiny, caplog):
    eng = FakeEngine(tiny)
    cap = EngineCapture(eng, AUX, lambda s, p: None, policy_step=lambda: 1)
    caplog.set_level(logging.WARNING)
    mb = micro_batch(5, three_d_positions=True)
    out = eng.forward_step(mb, None, forward_only=True)
    assert torch.equal(out, plain_forward(tiny, mb))
    logged = capture_warnings(caplog)
    assert len(logged) == 1 and "3-D (mrope) position_ids" in logged[0].getMessage()
    assert not logged[0].exc_info  # an expected condition: no traceback
    assert cap.end_step()["skipped_microbatches"] == 1


def test_the_policys_own_error_propagates_and_disarms(tiny):
    eng = FakeEngine(tiny)
    cap = EngineCapture(eng, AUX, lambda s, p: None, policy_step=lambda: 1)
    eng.fail = RuntimeError("CUDA out of memory (the policy's, not ours)")
    with pytest.raises(RuntimeError, match="the policy's"):
        eng.forward_step(micro_batch(0), None, forward_only=True)
    assert not cap.capture._armed and cap.errors == 0


def test_shipping_failure_is_logged_not_raised(tiny, caplog):
    def sink(samples, step):
        raise ConnectionError("learner gone")

    eng = FakeEngine(tiny)
    cap = EngineCapture(eng, AUX, sink, policy_step=lambda: 1)
    caplog.set_level(logging.WARNING)
    eng.forward_step(micro_batch(0), None, forward_only=True)
    counts = cap.end_step()
    assert counts["ship_failures"] == 1 and cap.n_samples == 0
    assert "learner gone" in capture_warnings(caplog)[0].getMessage()


# ----------------------------------------------------------------------------- start-up refusals
class _Learner:
    pass


def _install(engine, aux=AUX):
    return install_capture(engine, _Learner(), aux, policy_step=lambda: 0, budget_mb=1.0, world_size=2)


def test_ulysses_is_refused_at_install(tiny):
    eng = FakeEngine(tiny)
    eng.ulysses_sequence_parallel_size = 4
    with pytest.raises(CaptureUnsupported, match=r"Ulysses.*specrollout\.learner\.enable=false"):
        _install(eng)


def test_mrope_model_is_refused_at_install():
    model = tiny_llama()
    model.config.rope_parameters = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [4, 6, 6]}
    with pytest.raises(CaptureUnsupported, match="mrope"):
        _install(FakeEngine(model))
    model.config.rope_parameters = {"rope_type": "default", "rope_theta": 1e4}
    model.config.model_type = "qwen2_5_vl"
    with pytest.raises(CaptureUnsupported, match="qwen2_5_vl"):
        _install(FakeEngine(model))


def test_non_hf_layouts_and_engines_are_refused_at_install(tiny):
    with pytest.raises(CaptureUnsupported, match="cannot find decoder layers"):
        _install(FakeEngine(torch.nn.Sequential(torch.nn.Linear(4, 4))))
    with pytest.raises(CaptureUnsupported, match="out of range for a 3-layer target"):
        _install(FakeEngine(tiny), aux=[1, 7])

    class MegatronLike:
        ulysses_sequence_parallel_size = 1

    with pytest.raises(CaptureUnsupported, match="not veRL's FSDP engine"):
        _install(MegatronLike())


def test_install_shares_the_budget_across_ranks(tiny):
    cap = _install(FakeEngine(tiny))
    assert cap.budget_bytes == (1 << 20) // 2 and cap.token_bytes == 3 * 32 * 2 + 5
    cap.remove()


# ----------------------------------------------------------------------------- actor worker wiring
def test_actor_worker_ends_the_capture_step_and_reports_counts(tiny, caplog):
    from verl_specrollout.verl_adapter.actor_hooks import _ActorLearning

    class Method:
        def __init__(self):
            self.calls = []

        def remote(self, *args):
            self.calls.append(args)

    class Learner:
        add_capture_counts = Method()

    eng = FakeEngine(tiny)
    w = object.__new__(_ActorLearning)
    w.step, w.rank, w._warned_counts, w.learner = 7, 3, False, Learner()
    w.capture = EngineCapture(eng, AUX, lambda s, p: None, policy_step=lambda: w.step)
    eng.forward_step(micro_batch(0), None, forward_only=True)
    w._end_capture_step()
    (step, rank, counts), = Learner.add_capture_counts.calls
    assert (step, rank) == (7, 3) and counts["kept_sequences"] == 2
    w._end_capture_step()  # nothing captured since: nothing sent
    assert len(Learner.add_capture_counts.calls) == 1

    # a learner without the method: warned once, never raised
    w.learner = _Learner()
    caplog.set_level(logging.WARNING)
    for _ in range(2):
        eng.forward_step(micro_batch(0), None, forward_only=True)
        w._end_capture_step()
    assert sum("takes no capture counts" in r.getMessage() for r in caplog.records) == 1
