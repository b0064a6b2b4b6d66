"""Per-step capture budget: what is kept, that reruns repeat it, and what it costs."""
import pytest
import torch

from verl_specrollout.capture.budget import (CaptureTotals, StepBudget, allocate, bytes_per_token, calculate, main,
                                             rank_budget_bytes, segment_start)
from verl_specrollout.capture.samples import build_samples, sample_nbytes, response_windows
from verl_specrollout.capture.verl_capture import EngineCapture

from capture_rig import FakeEngine, tiny_llama

AUX = [1, 2]
HIDDEN = 32
TOKEN_BYTES = (len(AUX) + 1) * HIDDEN * 2 + 4 + 1  # 197


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama()


def micro_batch(seqs):
    from tensordict import TensorDict

    full = [torch.cat([p, r]) for p, r in seqs]
    ids = torch.nested.as_nested_tensor(full, layout=torch.jagged)
    pos = torch.nested.as_nested_tensor([torch.arange(len(f)) for f in full], layout=torch.jagged)
    rmask = torch.zeros(len(seqs), max(len(r) for _, r in seqs))
    for i, (_, r) in enumerate(seqs):
        rmask[i, : len(r)] = 1
    return TensorDict({"input_ids": ids, "position_ids": pos, "response_mask": rmask}, batch_size=[len(seqs)])


def step_batches(n_batches=3, per_batch=4, seed=0):
    """Random micro-batches of one step: lists of (prompt, response)."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        seqs = []
        for _ in range(per_batch):
            plen, rlen = int(torch.randint(2, 5, (1,), generator=g)), int(torch.randint(4, 9, (1,), generator=g))
            seqs.append((torch.randint(3, 64, (plen,), generator=g), torch.randint(3, 64, (rlen,), generator=g)))
        batches.append(seqs)
    return batches


def run_step(tiny, batches, step, rank=0, budget=None, cap=None):
    got = []
    cap = cap or EngineCapture(FakeEngine(tiny), AUX, lambda s, p: got.append((s, p)), policy_step=lambda: step[0],
                               budget_bytes=budget, rank=rank)
    for seqs in batches:
        cap.engine.forward_step(micro_batch(seqs), None, forward_only=True)
    counts = cap.end_step()
    samples = [s for part, _ in got for s in part]
    return cap, samples, counts


def reference_windows(tiny, batches):
    """Per sequence of the step: (token ids, final hidden states) of its whole window."""
    out = []
    for seqs in batches:
        for p, r in seqs:
            full = torch.cat([p, r])
            with torch.no_grad():
                fin = tiny(input_ids=full[None], output_hidden_states=True).hidden_states[-1][0]
            out.append((full[len(p) - 1:], fin[len(p) - 1:].to(torch.bfloat16).float()))
    return out


def locate(refs, sample):
    """(sequence, start in its window) of a sample: its tokens and the target's final hidden
    states must be consecutive positions of exactly one window."""
    ids, fin, n = sample["input_ids"].long(), sample["final_hidden"].float(), sample["input_ids"].numel()
    hits = [(i, o) for i, (w_ids, w_fin) in enumerate(refs) for o in range(len(w_ids) - n + 1)
            if torch.equal(w_ids[o:o + n], ids) and torch.allclose(w_fin[o:o + n], fin, atol=0.05, rtol=0.05)]
    assert len(hits) == 1, hits
    return hits[0]


# ----------------------------------------------------------------------------- arithmetic
def test_bytes_per_token_and_rank_share():
    assert bytes_per_token(3584, 3) == 4 * 3584 * 2 + 5 == 28677
    assert rank_budget_bytes(256, 8) == 32 << 20
    assert rank_budget_bytes(1, 3) == (1 << 20) // 3


def test_calculator_known_shape(capsys):
    r = calculate(hidden=3584, aux=3, tokens=2097152, budget_mb=256, world_size=8)
    assert r["bytes_per_token"] == 28677
    assert r["bytes_without_budget"] == 28677 * 2097152 == 60140027904
    assert r["kept_tokens"] == 8 * ((32 << 20) // 28677) == 9360
    assert r["bytes_with_budget"] == 9360 * 28677 <= 256 << 20
    assert r["kept_fraction"] == pytest.approx(9360 / 2097152)
    main(["--hidden", "3584", "--aux", "3", "--tokens", "2097152", "--world-size", "8"])
    out = capsys.readouterr().out
    assert "28677" in out and "60140027904" in out and "268416720" in out and "0.004463" in out
    # a budget above the step's size keeps everything
    assert calculate(hidden=64, aux=3, tokens=100, budget_mb=1)["kept_fraction"] == 1.0


def test_allocate_whole_entries_then_one_cut():
    per = 10
    # room for 2 whole entries of 5 and 3 positions of the third (8 bytes per sample on top)
    budget = 2 * (5 * per + 8) + (3 * per + 8)
    assert allocate([5, 5, 5, 5], budget, per) == [5, 5, 3, 0]
    assert allocate([5, 5, 5, 5], budget - 2 * per, per) == [5, 5, 0, 0]  # one position: not a sample
    assert allocate([5, 7], None, per) == [5, 7]


def test_a_shorter_cut_lies_inside_the_longer_one():
    import random

    rnd = random.Random(0)
    for _ in range(2000):
        full = rnd.randint(2, 300)
        frac = rnd.random()
        longer = rnd.randint(2, full)
        shorter = rnd.randint(2, longer)
        a, b = segment_start(full, longer, frac), segment_start(full, shorter, frac)
        assert 0 <= a <= b and b + shorter <= a + longer <= full
    assert segment_start(10, 10, 0.99) == 0  # a whole window starts at its start


def test_segment_inside_a_response_keeps_the_loss_alignment():
    # sequence: prompt 3 + response 6 (positions 3..8); a segment of positions 5..7 inside it
    ids = torch.arange(9)
    mask = torch.tensor([1, 1, 1, 0, 1, 1])  # response token 6 masked out
    seg = build_samples(ids, [(5, 5, 8)], torch.zeros(3, 4), torch.zeros(3, 2), [mask[5 - 3:]])
    assert seg[0]["input_ids"].tolist() == [5, 6, 7]
    assert seg[0]["loss_mask"].tolist() == [0, 1, 0]  # label of position p: the mask of token p + 1


# ----------------------------------------------------------------------------- selection
def _fake_samples(windows, step):
    n = sum(e - s for s, _, e in windows)
    ids = torch.arange(windows[-1][2])
    return build_samples(ids, windows, torch.zeros(n, 2 * HIDDEN), torch.zeros(n, HIDDEN), None, policy_step=step)


def _stream(chunks, budget, step=3, rank=0):
    sb = StepBudget(budget, TOKEN_BYTES, policy_step=step, rank=rank)
    for windows in chunks:
        picks = sb.plan(windows, [True] * len(windows))
        chosen = [(p, w) for p, w in zip(picks, windows) if p is not None]
        cut = [(w[0] + p.start, max(w[1], w[0] + p.start), w[0] + p.start + p.take) for p, w in chosen]
        built = _fake_samples(cut, step) if cut else []
        sb.commit([(p, s) for (p, _), s in zip(chosen, built)])
    return sb.finish()


def test_streamed_selection_equals_choosing_from_the_whole_step():
    """Micro-batch by micro-batch, the step ends with what one choice over all its sequences gives."""
    lens = [(3, 9), (2, 6), (4, 12), (2, 5), (3, 8), (5, 11), (2, 7), (3, 10), (4, 6), (2, 9)]
    cu = [0]
    for p, r in lens:
        cu.append(cu[-1] + p + r)
    windows = response_windows(cu, [r for _, r in lens])
    budget = 4 * (9 * TOKEN_BYTES + 8)
    once, c1 = _stream([windows], budget)
    streamed, c2 = _stream([windows[:3], windows[3:4], windows[4:8], windows[8:]], budget)
    assert [s["input_ids"].tolist() for s in once] == [s["input_ids"].tolist() for s in streamed]
    assert c1 == c2
    assert c1["kept_bytes"] <= budget and c1["truncated_sequences"] <= 1


def test_engine_capture_keeps_at_most_the_budget_in_whole_windows(tiny):
    batches = step_batches()
    refs = reference_windows(tiny, batches)
    budget = 3 * (8 * TOKEN_BYTES + 8) + 4 * TOKEN_BYTES
    cap, samples, counts = run_step(tiny, batches, [1], budget=budget)
    assert 2 <= len(samples) < len(refs)
    assert sum(sample_nbytes(s) for s in samples) <= budget
    assert counts["kept_bytes"] == sum(sample_nbytes(s) for s in samples)
    where = [locate(refs, s) for s in samples]  # real features of consecutive positions
    cut = [s for s, (i, _) in zip(samples, where) if s["input_ids"].numel() < len(refs[i][0])]
    assert len(cut) <= 1 and counts["truncated_sequences"] == len(cut)
    for s in cut:  # the new last position has no label; something is left to learn
        assert s["loss_mask"][-1] == 0 and s["loss_mask"].sum() > 0
    assert all(o == 0 for s, (_, o) in zip(samples, where) if not any(s is c for c in cut))
    # counts add up; every sequence was seen once
    assert counts["seen_sequences"] == len(refs) == counts["kept_sequences"] + counts["dropped_sequences"]
    assert counts["seen_tokens"] == sum(len(w) for w, _ in refs) == counts["kept_tokens"] + counts["dropped_tokens"]
    assert counts["kept_tokens"] == sum(s["input_ids"].numel() for s in samples)
    assert counts["budget_bytes"] == budget and counts["skipped_microbatches"] == 0


def test_the_cut_segment_is_not_always_a_prefix(tiny):
    batches = step_batches(seed=2)
    refs = reference_windows(tiny, batches)
    budget = 2 * (8 * TOKEN_BYTES + 8) + 4 * TOKEN_BYTES
    starts = []
    for step in range(1, 6):
        for s in run_step(tiny, batches, [step], budget=budget)[1]:
            starts.append(locate(refs, s)[1])
            if starts[-1] > 0:  # inside the response: every position but the last has a label
                assert s["loss_mask"].tolist() == [1] * (s["loss_mask"].numel() - 1) + [0]
    assert any(o > 0 for o in starts)


def test_selection_repeats_per_step_and_rank_and_resets_each_step(tiny):
    batches = step_batches(seed=1)
    refs = reference_windows(tiny, batches)
    budget = 3 * (8 * TOKEN_BYTES + 8)
    picked = lambda samples: [(locate(refs, s), s["input_ids"].numel()) for s in samples]  # noqa: E731
    _, a, _ = run_step(tiny, batches, [5], rank=0, budget=budget)
    _, b, _ = run_step(tiny, batches, [5], rank=0, budget=budget)
    assert picked(a) == picked(b)
    for x, y in zip(a, b):
        assert torch.equal(x["aux"], y["aux"])
    other_rank = picked(run_step(tiny, batches, [5], rank=1, budget=budget)[1])
    other_step = picked(run_step(tiny, batches, [6], rank=0, budget=budget)[1])
    assert other_rank != picked(a) and other_step != picked(a)  # the seed follows (step, rank)

    # one capture over two steps: the budget starts afresh when the policy step changes
    step = [1]
    got = []
    cap = EngineCapture(FakeEngine(tiny), AUX, lambda s, p: got.append((sum(map(sample_nbytes, s)), p)),
                        policy_step=lambda: step[0], budget_bytes=budget)
    for seqs in batches:
        cap.engine.forward_step(micro_batch(seqs), None, forward_only=True)
    step[0] = 2  # no end_step: the next forward ships step 1 first
    for seqs in batches:
        cap.engine.forward_step(micro_batch(seqs), None, forward_only=True)
    assert [p for _, p in got] == [1]
    second = cap.end_step()
    assert [p for _, p in got] == [1, 2]
    assert budget - 8 * TOKEN_BYTES < got[0][0] <= budget and budget - 8 * TOKEN_BYTES < got[1][0] <= budget
    assert second["kept_bytes"] == got[1][0]
    assert second["seen_sequences"] == sum(len(s) for s in batches)  # counts of step 2 only
    assert cap.end_step() is None


def test_totals_sum_ranks_of_the_newest_step():
    t = CaptureTotals(keep_steps=2)
    assert t.metrics() == {}
    c = {"seen_tokens": 100, "kept_tokens": 10, "kept_sequences": 1, "dropped_sequences": 9}
    t.add(1, 0, c)
    t.add(2, 0, c)
    t.add(2, 1, {**c, "kept_tokens": 30})
    t.add(2, 1, {**c, "kept_tokens": 30})  # a repeated report replaces, never doubles
    m = t.metrics()
    assert m["capture/policy_step"] == 2 and m["capture/ranks"] == 2
    assert m["capture/kept_tokens"] == 40 and m["capture/seen_tokens"] == 200
    assert m["capture/kept_fraction"] == pytest.approx(0.2)
    t.add(3, 0, c)
    t.add(4, 0, c)
    assert len(t._steps) == 2 and t.metrics()["capture/policy_step"] == 4


def test_learner_metrics_show_the_summed_capture_counts(tmp_path):
    """What actor ranks report through SpecLearner.add_capture_counts reaches metrics() as capture/*."""
    from verl_specrollout.learner.actor import SpecLearner
    from verl_specrollout.testing.testbed.toy import get_toy

    toy = get_toy()
    learner = SpecLearner({"publish_dir": str(tmp_path / "pub")}, toy["target"], toy["aux_layer_ids"],
                          bootstrap_dir=toy["draft"])
    learner.add_capture_counts(3, 0, {"seen_tokens": 100, "kept_tokens": 40, "shipper_dropped_batches_total": 1})
    learner.add_capture_counts(3, 1, {"seen_tokens": 100, "kept_tokens": 60, "shipper_dropped_batches_total": 0})
    m = learner.metrics()
    assert m["capture/kept_tokens"] == 100 and m["capture/ranks"] == 2
    assert m["capture/kept_fraction"] == 0.5 and m["capture/shipper_dropped_batches_total"] == 1
