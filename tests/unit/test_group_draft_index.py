"""Group suffix index: sources, matching, count weighting, history, eviction, preemption (no vLLM)."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest

from verl_specrollout.group_draft.index import SOURCES, GroupSuffixIndex, SuffixDraft

PROMPT = [900, 901, 902, 903, 904, 905]
OTHER_PROMPT = [910, 911, 912, 913, 914, 915]


def rollout(idx, prompt, responses, prefix="r", keep=True):
    """One rollout of a group: every response's request added, extended token by token, finished."""
    ids = [f"{prefix}{i}" for i in range(len(responses))]
    for rid in ids:
        idx.add_request(rid, prompt)
    for t in range(max(map(len, responses))):
        for rid, resp in zip(ids, responses):
            if t < len(resp):
                idx.extend(rid, [resp[t]])
    for rid in ids:
        idx.finish(rid, keep=keep)
    return ids


def all_tables(idx, prompts):
    return {(bytes(GroupSuffixIndex.group_key(p)), s): idx.table_counts(GroupSuffixIndex.group_key(p), s)
            for p in prompts for s in SOURCES}


def test_siblings_continuation_after_shared_prefix():
    idx = GroupSuffixIndex()
    idx.add_request("a", PROMPT)
    idx.add_request("b", PROMPT)
    idx.extend("a", [1, 2, 3, 4, 5, 6, 7, 8])
    idx.extend("b", [1, 2, 3])
    d = idx.propose("b", 4)
    assert d.source == "siblings"
    assert d.tokens == [4, 5, 6, 7]
    assert d.probs == [1.0] * 4
    assert d.match_len == min(idx.max_match, len(PROMPT) + 3)
    assert d.expected_accepted() == pytest.approx(4.0)
    # the open end of a sequence has no continuation: a's own suffix proposes nothing past it
    assert idx.propose("a", 4).tokens == []


def test_first_response_token_drafted_from_siblings_starts():
    idx2 = GroupSuffixIndex()
    idx2.add_request("a", PROMPT)
    idx2.add_request("b", PROMPT)
    idx2.extend("a", [40, 41, 42])
    d = idx2.propose("b", 2)  # b has no response token yet: its context is the prompt's tail
    assert d.source == "siblings" and d.tokens == [40, 41]


def test_history_used_on_a_new_rollout_of_the_same_prompt():
    idx = GroupSuffixIndex()
    rollout(idx, PROMPT, [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]], prefix="e1-")
    assert idx.stats()["history_responses"] == 2
    assert idx.stats()["live_requests"] == 0
    idx.add_request("e2-0", PROMPT)
    idx.extend("e2-0", [1, 2])
    d = idx.propose("e2-0", 3)
    assert d.source == "history"
    assert d.tokens == [3, 4, 5]
    # history is not a sibling: the new rollout's siblings table has only e2-0's own tokens
    key = GroupSuffixIndex.group_key(PROMPT)
    fresh = GroupSuffixIndex()
    fresh.add_request("e2-0", PROMPT)
    fresh.extend("e2-0", [1, 2])
    assert idx.table_counts(key, "siblings") == fresh.table_counts(key, "siblings")
    assert fresh.propose("e2-0", 3).tokens == []  # the siblings alone have nothing to offer


def test_different_prompts_never_share():
    idx = GroupSuffixIndex()
    idx.add_request("a", PROMPT)
    idx.extend("a", [1, 2, 3, 4, 5, 6])
    rollout(idx, PROMPT, [[1, 2, 3, 4, 5, 6]], prefix="old")
    idx.add_request("z", OTHER_PROMPT)
    idx.extend("z", [1, 2, 3])
    assert idx.propose("z", 4).tokens == []
    assert GroupSuffixIndex.group_key(PROMPT) != GroupSuffixIndex.group_key(OTHER_PROMPT)
    assert idx.stats()["groups"] == 2


def test_group_key_is_stable_across_processes_and_input_types():
    key = GroupSuffixIndex.group_key(PROMPT)
    assert key == GroupSuffixIndex.group_key(np.array(PROMPT, dtype=np.int32))
    assert key == GroupSuffixIndex.group_key(tuple(PROMPT))
    code = ("from verl_specrollout.group_draft.index import GroupSuffixIndex;"
            f"print(GroupSuffixIndex.group_key({PROMPT!r}).hex())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert out.stdout.strip() == key.hex()


def test_prompt_source_copies_from_the_prompt():
    idx = GroupSuffixIndex()
    prompt = [900, 50, 51, 52, 53, 54, 901, 902]
    idx.add_request("a", prompt)
    idx.extend("a", [7, 50, 51])
    d = idx.propose("a", 3)
    assert d.source == "prompt" and d.tokens == [52, 53, 54]


def test_longest_match_wins_between_sources():
    idx = GroupSuffixIndex()
    rollout(idx, PROMPT, [[5, 1, 2, 3, 9, 9]], prefix="e1-")  # history: (1,2,3) -> 9
    idx.add_request("a", PROMPT)
    idx.add_request("b", PROMPT)
    idx.extend("a", [6, 5, 1, 2, 3, 4, 4])  # siblings: (..., 6, 5, 1, 2, 3) -> 4
    idx.extend("b", [6, 5, 1, 2, 3])
    d = idx.propose("b", 1)
    # history matches (5, 1, 2, 3) = 4 tokens; siblings match (..., 6, 5, 1, 2, 3) = up to max_match
    assert d.source == "siblings" and d.tokens == [4]
    assert d.match_len > 4


def test_longer_history_match_beats_a_shorter_sibling_match():
    idx = GroupSuffixIndex()
    rollout(idx, PROMPT, [[8, 1, 2, 3, 5]], prefix="e1-")  # history: (..., 8, 1, 2, 3) -> 5
    idx.add_request("a", PROMPT)
    idx.add_request("b", PROMPT)
    idx.extend("a", [9, 2, 3, 4])  # siblings: (2, 3) -> 4 only
    idx.extend("b", [8, 1, 2, 3])
    d = idx.propose("b", 1)
    assert (d.source, d.tokens) == ("history", [5])


def test_count_weighting_picks_the_more_frequent_continuation():
    idx = GroupSuffixIndex()
    rollout(idx, PROMPT, [[1, 2, 3, 7], [1, 2, 3, 7], [1, 2, 3, 7], [1, 2, 3, 9]], prefix="e1-")
    idx.add_request("n", PROMPT)
    idx.extend("n", [1, 2, 3])
    d = idx.propose("n", 1)
    assert d.source == "history"
    assert d.tokens == [7]
    assert d.probs == [pytest.approx(0.75)]
    assert d.support == [4]
    # the same among siblings of the live rollout
    idx2 = GroupSuffixIndex()
    for i, last in enumerate([9, 7, 7]):
        idx2.add_request(f"s{i}", PROMPT)
        idx2.extend(f"s{i}", [1, 2, 3, last])
    idx2.add_request("q", PROMPT)
    idx2.extend("q", [1, 2, 3])
    d2 = idx2.propose("q", 1)
    assert d2.source == "siblings" and d2.tokens == [7] and d2.probs == [pytest.approx(2 / 3)]


def test_history_counts_add_up_across_rollouts():
    idx = GroupSuffixIndex(history_depth=4)
    rollout(idx, PROMPT, [[1, 2, 3, 9, 4], [5, 5]], prefix="e1-")
    rollout(idx, PROMPT, [[1, 2, 3, 7, 4], [1, 2, 3, 7, 4]], prefix="e2-")
    assert idx.stats()["history_chunks"] == 2  # one per rollout, each its own table
    idx.add_request("n", PROMPT)
    idx.extend("n", [1, 2, 3])
    d = idx.propose("n", 2)
    assert d.source == "history" and d.tokens == [7, 4]
    assert d.probs == [pytest.approx(2 / 3), 1.0] and d.support == [3, 2]
    idx.finish("n", keep=False)
    # a third rollout of 2 pushes the first rollout out whole (depth 4)
    rollout(idx, PROMPT, [[8], [8]], prefix="e3-")
    st = idx.stats()
    assert st["history_chunks"] == 2 and st["history_responses"] == 4
    assert idx.history_responses(GroupSuffixIndex.group_key(PROMPT))[0] == [1, 2, 3, 7, 4]


def test_draft_crosses_from_one_sequence_to_another():
    idx = GroupSuffixIndex(max_match=8, min_match=2)
    idx.add_request("a", PROMPT)
    idx.add_request("b", PROMPT)
    idx.add_request("c", PROMPT)
    idx.extend("a", [20, 1, 2, 3, 4, 5])  # ends after 5: no continuation of (..., 4, 5) here
    idx.extend("b", [30, 31, 4, 5, 6, 7])  # continues (4, 5) -> 6 -> 7
    idx.extend("c", [20, 1, 2, 3])
    d = idx.propose("c", 4)
    assert d.tokens == [4, 5, 6, 7]
    assert d.source == "siblings"


def test_draft_context_grows_with_the_draft():
    """After each proposed token the match is retried one token longer, so the draft keeps to the
    sequence it follows (a one-token context alone would jump to the more frequent 5 -> 8)."""
    idx = GroupSuffixIndex(max_match=8, min_match=1)
    for rid, resp in (("a", [1, 2, 3, 4, 5, 6]), ("b", [7, 4, 5, 8]), ("b2", [7, 4, 5, 8])):
        idx.add_request(rid, PROMPT)
        idx.extend(rid, resp)
    idx.add_request("c", PROMPT)
    idx.extend("c", [61, 62, 3])
    d = idx.propose("c", 3)
    assert d.match_len == 1 and d.tokens == [4, 5, 6]


def test_expected_accepted_is_sum_of_prefix_products():
    d = SuffixDraft([1, 2, 3], "siblings", 3, [0.5, 0.5, 1.0])
    assert d.expected_accepted() == pytest.approx(0.5 + 0.25 + 0.25)
    assert SuffixDraft([], "", 0, []).expected_accepted() == 0.0


# ----------------------------------------------------------------- bounds and eviction
def random_responses(rng, n, length, vocab=4):
    return [[rng.randrange(vocab) for _ in range(rng.randrange(1, length))] for _ in range(n)]


def test_history_depth_evicts_oldest_and_counts_match_a_rebuild():
    rng = random.Random(0)
    for depth, rollouts in ((3, [2, 2, 2]), (2, [5]), (3, [4]), (2, [1, 1, 1, 3]), (0, [2, 2])):
        idx = GroupSuffixIndex(max_match=4, min_match=1, history_depth=depth)
        every = []
        for r, n in enumerate(rollouts):
            resps = random_responses(rng, n, 30)
            rollout(idx, PROMPT, resps, prefix=f"e{r}-")
            every.extend(resps)
        survivors = every[len(every) - depth:] if depth else []
        key = GroupSuffixIndex.group_key(PROMPT)
        assert idx.history_responses(key) == survivors
        ref = GroupSuffixIndex(max_match=4, min_match=1, history_depth=depth)
        if survivors:
            rollout(ref, PROMPT, survivors, prefix="ref")
        else:
            ref.add_request("ref", PROMPT)
            ref.finish("ref")
        assert idx.table_counts(key, "history") == ref.table_counts(key, "history"), (depth, rollouts)
        assert idx.stats()["indexed_tokens"] == len(PROMPT) + sum(map(len, survivors))


def test_aborted_request_leaves_no_trace():
    rng = random.Random(1)
    resps = random_responses(rng, 4, 40)
    idx = GroupSuffixIndex(max_match=5, min_match=1)
    ref = GroupSuffixIndex(max_match=5, min_match=1)
    for i, r in enumerate(resps):
        idx.add_request(str(i), PROMPT)
        idx.extend(str(i), r)
        if i != 2:
            ref.add_request(str(i), PROMPT)
            ref.extend(str(i), r)
    idx.finish("2", keep=False)
    assert all_tables(idx, [PROMPT]) == all_tables(ref, [PROMPT])
    assert idx.stats()["indexed_tokens"] == ref.stats()["indexed_tokens"]
    for i in (0, 1, 3):
        idx.finish(str(i))
        ref.finish(str(i))
    assert all_tables(idx, [PROMPT]) == all_tables(ref, [PROMPT])
    assert idx.stats()["history_responses"] == 3


def test_global_bound_evicts_least_recently_used_idle_groups():
    rng = random.Random(2)
    prompts = [[800 + g, 801 + g, 802 + g] for g in range(0, 50, 10)]
    data = {i: random_responses(rng, 2, 40) for i in range(len(prompts))}
    per_group = {i: len(prompts[i]) + sum(map(len, data[i])) for i in data}
    bound = per_group[2] + per_group[3] + per_group[4] + 1
    idx = GroupSuffixIndex(max_match=4, min_match=1, max_tokens=bound)
    for i, p in enumerate(prompts):
        rollout(idx, p, data[i], prefix=f"g{i}-")
        assert idx.stats()["indexed_tokens"] <= bound
    st = idx.stats()
    # oldest groups went first; the three most recent survive whole
    assert st["groups"] == 3 and st["evicted_groups"] == 2
    ref = GroupSuffixIndex(max_match=4, min_match=1)
    for i in (2, 3, 4):
        rollout(ref, prompts[i], data[i], prefix=f"g{i}-")
    assert all_tables(idx, prompts) == all_tables(ref, prompts)
    assert st["indexed_tokens"] == ref.stats()["indexed_tokens"]


def test_live_group_is_never_evicted():
    idx = GroupSuffixIndex(max_match=3, min_match=1, max_tokens=20)
    rollout(idx, OTHER_PROMPT, [[1, 2, 3]], prefix="old")  # idle: evictable
    idx.add_request("live", PROMPT)
    idx.extend("live", list(range(40)))  # far over the bound
    st = idx.stats()
    assert st["groups"] == 1 and st["live_requests"] == 1 and st["over_bound"]
    assert idx.propose("live", 2).tokens == []  # (fresh tokens: nothing repeats)
    idx.extend("live", [5, 6])
    assert idx.propose("live", 2).tokens == [7, 8]  # its own earlier tokens are still indexed
    idx.finish("live")
    assert idx.stats()["indexed_tokens"] <= 20 and idx.stats()["groups"] == 0


def test_lru_order_follows_use_not_creation():
    idx = GroupSuffixIndex(max_match=3, min_match=1, max_tokens=10**6)
    pa, pb, pc = [700, 1], [700, 2], [700, 3]
    rollout(idx, pa, [[1, 2, 3]], prefix="a")
    rollout(idx, pb, [[1, 2, 3]], prefix="b")
    rollout(idx, pa, [[4, 5, 6]], prefix="a2")  # group a used again: now b is the oldest idle
    idx.max_tokens = idx.stats()["indexed_tokens"]
    rollout(idx, pc, [[1, 2, 3]], prefix="c")
    keys = {GroupSuffixIndex.group_key(p): n for p, n in ((pa, "a"), (pb, "b"), (pc, "c"))}
    left = {n for k, n in keys.items() if idx.table_counts(k, "prompt") or idx.history_responses(k)}
    assert left == {"a", "c"}


# ----------------------------------------------------------------- preemption and bad calls
def test_preempted_request_readded_is_not_double_counted():
    idx = GroupSuffixIndex(max_match=4, min_match=1)
    ref = GroupSuffixIndex(max_match=4, min_match=1)
    for x in (idx, ref):
        x.add_request("a", PROMPT)
        x.extend("a", [1, 2, 3, 1, 2])
    idx.add_request("a", PROMPT)  # resumed: same id, tokens unchanged
    idx.add_request("a", PROMPT, output_token_ids=[1, 2, 3, 1, 2])
    assert all_tables(idx, [PROMPT]) == all_tables(ref, [PROMPT])
    assert idx.stats()["live_requests"] == 1
    # a resume that carries tokens the index has not seen adds only those
    idx.add_request("a", PROMPT, output_token_ids=np.array([1, 2, 3, 1, 2, 3, 9]))
    ref.extend("a", [3, 9])
    assert all_tables(idx, [PROMPT]) == all_tables(ref, [PROMPT])
    idx.extend("a", [])
    idx.extend("a", np.array([], dtype=np.int64))
    assert all_tables(idx, [PROMPT]) == all_tables(ref, [PROMPT])
    assert idx.stats()["indexed_tokens"] == ref.stats()["indexed_tokens"]


def test_unknown_requests_and_k0_are_harmless():
    idx = GroupSuffixIndex()
    d = idx.propose("nope", 4)
    assert d.tokens == [] and d.source == "" and d.match_len == 0 and d.probs == []
    idx.extend("nope", [1, 2])
    idx.finish("nope")
    idx.add_request("a", PROMPT)
    idx.extend("a", [1, 2, 3, 1, 2])
    assert idx.propose("a", 0).tokens == []
    assert idx.propose("a", 3).tokens == [3, 1, 2]
    assert "a" in idx and "nope" not in idx


@pytest.mark.parametrize("kwargs", [dict(min_match=0), dict(min_match=5, max_match=4),
                                    dict(history_depth=-1), dict(max_tokens=0)])
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError):
        GroupSuffixIndex(**kwargs)


def test_random_workload_matches_rebuild_after_mixed_finishes():
    """Random interleaving of adds, extends, aborts and finishes across groups, then a rebuild."""
    rng = random.Random(5)
    prompts = [[600 + g, 601, 602] for g in range(3)]
    idx = GroupSuffixIndex(max_match=4, min_match=2, history_depth=3)
    kept_by_group = {g: [] for g in range(3)}
    live = {}
    n = 0
    for _ in range(400):
        u = rng.random()
        if u < 0.25 or not live:
            g = rng.randrange(3)
            rid = f"r{n}"
            n += 1
            idx.add_request(rid, prompts[g])
            live[rid] = (g, [])
        elif u < 0.85:
            rid = rng.choice(sorted(live))
            new = [rng.randrange(3) for _ in range(rng.randrange(0, 4))]
            idx.extend(rid, new)
            live[rid][1].extend(new)
        else:
            rid = rng.choice(sorted(live))
            keep = rng.random() < 0.8
            idx.finish(rid, keep=keep)
            g, toks = live.pop(rid)
            if keep and toks:
                kept_by_group[g].append(toks)
    for rid in sorted(live):
        g, toks = live.pop(rid)
        idx.finish(rid)
        if toks:
            kept_by_group[g].append(toks)
    # rollouts ended at different times, but history is the last `depth` kept responses per group
    ref = GroupSuffixIndex(max_match=4, min_match=2, history_depth=3)
    for g in range(3):
        key = GroupSuffixIndex.group_key(prompts[g])
        survivors = idx.history_responses(key)
        assert survivors == kept_by_group[g][-3:]
        rollout(ref, prompts[g], survivors or [[]], prefix=f"g{g}-")
    assert all_tables(idx, prompts) == all_tables(ref, prompts)


def test_out_of_sync_table_is_logged_not_raised(caplog):
    """An abort whose counts are missing (only a hash collision could do it) must not stop the engine."""
    import logging

    idx = GroupSuffixIndex()
    idx.add_request("a", PROMPT)
    idx.add_request("b", PROMPT)
    idx.extend("a", [1, 2, 3])
    idx.extend("b", [1, 2, 4])
    idx._groups[GroupSuffixIndex.group_key(PROMPT)].sib.clear()  # simulate lost counts
    with caplog.at_level(logging.WARNING, logger="verl_specrollout.group_draft.index"):
        idx.finish("a", keep=False)
        idx.finish("b", keep=False)
    assert len([r for r in caplog.records if "not in the table" in r.message]) == 1
    assert idx.stats()["live_requests"] == 0
