"""Block manager: exact block ids, reference counts, prefix hits and eviction order."""

from __future__ import annotations

from services.common.sampling import SamplingParams
from services.scheduler.block_manager import BlockManager
from services.scheduler.sequence import Sequence


def make_seq(tokens: list[int], key: str = "r") -> Sequence:
    return Sequence(key, tokens, SamplingParams(max_tokens=4))


def admit(bm: BlockManager, seq: Sequence, compute_all: bool = True) -> list[int]:
    """Allocates the sequence with its prefix hits, marks every token computed and offers full blocks."""
    hits = bm.match_prefix(seq)
    bm.allocate(seq, hits, len(seq.token_ids) - len(hits) * bm.block_size)
    if compute_all:
        seq.num_computed_tokens = len(seq.token_ids)
        bm.cache_full_blocks(seq)
    return hits


def ref_counts(bm: BlockManager) -> list[int]:
    return [b.ref_count for b in bm.blocks]


def test_allocate_takes_free_blocks_in_id_order():
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = make_seq(list(range(10)))
    admit(bm, seq)
    assert seq.block_table == [0, 1, 2]
    assert ref_counts(bm) == [1, 1, 1, 0, 0, 0, 0, 0]
    assert bm.num_free_blocks == 5
    assert len(bm.cached) == 2  # the two full blocks; the third holds 2 of 4 tokens


def test_prefix_hit_reuses_every_full_block_of_the_longest_cached_prefix():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = make_seq(list(range(13)), "a")
    admit(bm, a)
    b = make_seq(list(range(12)) + [70, 71], "b")
    hits = admit(bm, b)
    assert hits == [0, 1, 2]
    assert b.block_table == [0, 1, 2, 4]
    assert ref_counts(bm)[:5] == [2, 2, 2, 1, 1]


def test_hit_stops_at_the_first_block_whose_tokens_differ():
    bm = BlockManager(num_blocks=8, block_size=4)
    admit(bm, make_seq(list(range(12)), "a"))
    b = make_seq([0, 1, 2, 3, 9, 9, 9, 9, 8, 9, 10, 11, 12], "b")
    assert bm.match_prefix(b) == [0]  # block 2 has the same tokens but a different parent


def test_last_prompt_block_is_never_taken_whole_from_the_cache():
    bm = BlockManager(num_blocks=8, block_size=4)
    admit(bm, make_seq(list(range(13)), "a"))
    b = make_seq(list(range(12)), "b")
    hits = admit(bm, b, compute_all=False)
    assert hits == [0, 1]  # block 2 holds the last prompt token: it is computed again in a new block
    assert b.block_table == [0, 1, 4]
    assert b.num_computed_tokens == 8


def test_hash_collision_with_different_tokens_is_not_a_hit():
    bm = BlockManager(num_blocks=8, block_size=4)
    admit(bm, make_seq(list(range(9)), "a"))
    bm.blocks[1].token_ids = (40, 41, 42, 43)  # as if another content had produced the same hash
    assert bm.match_prefix(make_seq(list(range(10)), "b")) == [0]


def test_freed_cached_blocks_are_evicted_least_recently_used_only_when_free_blocks_run_out():
    bm = BlockManager(num_blocks=6, block_size=2)
    a = make_seq([1, 2, 3, 4, 5], "a")
    admit(bm, a)  # blocks 0 and 1 full and cached, block 2 partial
    bm.free(a)
    assert list(bm.free_block_ids) == [3, 4, 5, 2]  # the partial block is not cached
    assert list(bm.evictable) == [1, 0]  # tail first: the first block outlives the second
    b = make_seq([10, 11, 12, 13, 14, 15, 16, 17], "b")
    admit(bm, b)
    assert b.block_table == [3, 4, 5, 2]
    assert bm.num_evictions == 0 and len(bm.evictable) == 2
    c = make_seq([20, 21, 22], "c")
    admit(bm, c)
    assert c.block_table == [1, 0]
    assert bm.num_evictions == 2
    assert bm.match_prefix(make_seq([1, 2, 3, 4, 5], "d")) == []


def test_a_prefix_hit_makes_a_cached_block_most_recently_used():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = make_seq([1, 2, 3, 4, 5], "a")
    admit(bm, a)
    bm.free(a)
    assert list(bm.evictable) == [1, 0]
    b = make_seq([1, 2, 9], "b")
    assert admit(bm, b) == [0]
    bm.free(b)
    assert list(bm.evictable) == [1, 0]  # block 0 was used again after block 1 was freed
    assert list(bm.free_block_ids) == [2, 3]
    c = make_seq([30, 31, 32, 33, 34, 35, 36], "c")
    admit(bm, c)
    assert c.block_table == [2, 3, 1, 0]


def test_can_allocate_counts_idle_prefix_hits_as_taken_from_the_free_pool():
    bm = BlockManager(num_blocks=3, block_size=2)
    a = make_seq([1, 2, 3], "a")
    admit(bm, a)
    bm.free(a)
    assert bm.num_free_blocks == 3
    fits = make_seq([1, 2, 7, 8, 9, 10], "fits")
    hits = bm.match_prefix(fits)
    assert hits == [0]
    assert bm.can_allocate(fits, hits, 4)  # 1 hit + 2 new blocks = 3
    too_long = make_seq([1, 2, 7, 8, 9, 10, 11, 12], "too_long")
    assert not bm.can_allocate(too_long, bm.match_prefix(too_long), 6)


def test_can_allocate_asks_free_blocks_for_lookahead_tokens_and_allocate_takes_none_of_them():
    bm = BlockManager(num_blocks=3, block_size=4)
    seq = make_seq(list(range(8)))
    assert bm.can_allocate(seq, [], 8, num_lookahead_tokens=4)  # 12 tokens: 3 blocks
    assert not bm.can_allocate(seq, [], 8, num_lookahead_tokens=5)
    bm.allocate(seq, [], 8)
    assert (seq.block_table, bm.num_free_blocks) == ([0, 1], 1)


def test_append_slots_adds_a_block_only_when_the_last_one_is_full():
    bm = BlockManager(num_blocks=4, block_size=4)
    seq = make_seq([1, 2, 3], "a")
    admit(bm, seq)
    assert seq.block_table == [0]
    bm.append_slots(seq, 1)
    assert seq.block_table == [0]
    seq.num_computed_tokens = 4
    assert bm.can_append(seq, 5)
    bm.append_slots(seq, 5)
    assert seq.block_table == [0, 1, 2]
    assert not bm.can_append(seq, 13)  # 17 tokens need 5 blocks, 4 exist


def test_free_without_keeping_cached_forgets_the_blocks_hashes():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = make_seq([1, 2, 3, 4, 5], "a")
    admit(bm, a)
    bm.free(a, keep_cached=False)
    assert bm.cached == {}
    assert list(bm.free_block_ids) == [3, 2, 1, 0]
    assert bm.match_prefix(make_seq([1, 2, 3, 4, 5], "b")) == []


def test_shared_block_stays_referenced_until_its_last_user_frees_it():
    bm = BlockManager(num_blocks=6, block_size=2)
    a = make_seq([1, 2, 3, 4, 5], "a")
    admit(bm, a)
    b = make_seq([1, 2, 3, 4, 6], "b")
    assert admit(bm, b) == [0, 1]
    bm.free(a)
    assert ref_counts(bm) == [1, 1, 0, 1, 0, 0]
    assert list(bm.evictable) == []
    bm.free(b)
    assert list(bm.evictable) == [1, 0]
    assert bm.num_free_blocks == 6


def test_prefix_caching_disabled_never_hits():
    bm = BlockManager(num_blocks=6, block_size=2, enable_prefix_caching=False)
    admit(bm, make_seq([1, 2, 3, 4, 5], "a"))
    assert bm.match_prefix(make_seq([1, 2, 3, 4, 5], "b")) == []
    assert bm.cached == {}
