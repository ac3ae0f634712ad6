"""Paged KV block manager: reference counts, hash-chained full blocks (prefix cache), LRU eviction.

Every block is in exactly one of three places:
  - free:       never cached or no longer cached, ref_count 0, kept in a FIFO (O(1) pop);
  - evictable:  cached (hash known), ref_count 0, kept in LRU order, reused by a prefix hit or evicted
                oldest first only when no free block is left;
  - in use:     ref_count > 0, listed in the block table of exactly ref_count sequences.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from services.common.errors import ResourceExhausted
from services.scheduler.sequence import Sequence

# Parent hash of a sequence's first block.
ROOT_HASH = 0


def hash_block(parent_hash: int, token_ids: tuple[int, ...]) -> int:
    """Chain hash of a full block: it names the block and, through parent_hash, every token before it."""
    return hash((parent_hash, token_ids))


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "parent_hash", "token_ids")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_count = 0
        self.hash: int | None = None  # set while the block is in the prefix cache
        self.parent_hash = ROOT_HASH
        self.token_ids: tuple[int, ...] = ()  # compared on a hit, so a hash collision never serves wrong KV


class BlockManager:
    """Owns one worker's KV blocks. Predicates and actions come in pairs: can_allocate/allocate,
    can_append/append_slots."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(f"num_blocks and block_size must be positive, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_block_ids: deque[int] = deque(range(num_blocks))
        self.evictable: OrderedDict[int, None] = OrderedDict()  # oldest first
        self.cached: dict[int, int] = {}  # block hash -> block id
        self.num_evictions = 0

    # ---- accounting ----

    @property
    def num_free_blocks(self) -> int:
        """Blocks that can be handed out now (free plus evictable cached ones)."""
        return len(self.free_block_ids) + len(self.evictable)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    @property
    def usage(self) -> float:
        return self.num_used_blocks / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- prefix cache ----

    def update_hashes(self, seq: Sequence) -> None:
        """Hashes the sequence's full blocks of known tokens not hashed yet (each block once)."""
        bs = self.block_size
        hashes = seq.block_hashes
        tokens = seq.token_ids
        while (len(hashes) + 1) * bs <= len(tokens):
            start = len(hashes) * bs
            parent = hashes[-1] if hashes else ROOT_HASH
            hashes.append(hash_block(parent, tuple(tokens[start : start + bs])))

    def match_prefix(self, seq: Sequence) -> list[int]:
        """Block ids of the longest cached prefix of the sequence's known tokens.

        The block holding the last known token is never taken whole from the cache: the model must run
        at least that token to sample the next one.
        """
        if not self.enable_prefix_caching:
            return []
        self.update_hashes(seq)
        bs = self.block_size
        max_blocks = (len(seq.token_ids) - 1) // bs
        hits: list[int] = []
        parent = ROOT_HASH
        for i in range(min(max_blocks, len(seq.block_hashes))):
            h = seq.block_hashes[i]
            block_id = self.cached.get(h)
            if block_id is None:
                break
            block = self.blocks[block_id]
            if block.parent_hash != parent or block.token_ids != tuple(seq.token_ids[i * bs : (i + 1) * bs]):
                break  # hash collision: different tokens behind the same hash
            hits.append(block_id)
            parent = h
        return hits

    def num_cached_prefix_tokens(self, seq: Sequence) -> int:
        """Tokens of the sequence that a prefix hit would serve now (for routing)."""
        return len(self.match_prefix(seq)) * self.block_size

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Offers to the cache every block that is full of known tokens whose KV is computed or scheduled.

        Called after a step is planned, so that a sequence planned in the same step never reads a block
        that step is still writing.
        """
        if not self.enable_prefix_caching:
            return
        self.update_hashes(seq)
        end = min(len(seq.block_hashes), seq.num_computed_tokens // self.block_size, len(seq.block_table))
        bs = self.block_size
        for i in range(seq.num_registered_blocks, end):
            block = self.blocks[seq.block_table[i]]
            h = seq.block_hashes[i]
            if block.hash is None and h not in self.cached:
                block.hash = h
                block.parent_hash = seq.block_hashes[i - 1] if i else ROOT_HASH
                block.token_ids = tuple(seq.token_ids[i * bs : (i + 1) * bs])
                self.cached[h] = block.block_id
        if end > seq.num_registered_blocks:
            seq.num_registered_blocks = end

    # ---- allocation ----

    def can_allocate(self, seq: Sequence, hits: list[int], num_new_tokens: int, num_lookahead_tokens: int = 0) -> bool:
        """Whether a waiting sequence can take its prefix hits plus blocks for num_new_tokens more, with free blocks
        left for num_lookahead_tokens after them (checked, not taken)."""
        needed = self.blocks_needed(len(hits) * self.block_size + num_new_tokens + num_lookahead_tokens) - len(hits)
        num_idle_hits = sum(1 for b in hits if self.blocks[b].ref_count == 0)  # hits that leave `evictable`
        return needed <= self.num_free_blocks - num_idle_hits

    def allocate(self, seq: Sequence, hits: list[int], num_new_tokens: int) -> None:
        """Gives a waiting sequence its prefix hits and blocks for num_new_tokens more tokens."""
        if seq.block_table:
            raise RuntimeError(f"{seq!r} already holds blocks")
        if not self.can_allocate(seq, hits, num_new_tokens):
            raise ResourceExhausted(f"not enough free KV blocks for {seq!r}")
        for block_id in hits:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.evictable[block_id]
            block.ref_count += 1
        seq.block_table = list(hits)
        seq.num_computed_tokens = len(hits) * self.block_size
        seq.num_registered_blocks = len(hits)
        self._grow(seq, seq.num_computed_tokens + num_new_tokens)

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Whether a running sequence can get the blocks for num_new_tokens more tokens."""
        needed = self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        return needed <= 0 or needed <= self.num_free_blocks

    def append_slots(self, seq: Sequence, num_new_tokens: int) -> None:
        """Appends the blocks a running sequence needs for num_new_tokens more tokens."""
        if not self.can_append(seq, num_new_tokens):
            raise ResourceExhausted(f"not enough free KV blocks for {seq!r}")
        self._grow(seq, seq.num_computed_tokens + num_new_tokens)

    def free(self, seq: Sequence, keep_cached: bool = True) -> None:
        """Releases the sequence's blocks. Cached ones stay reusable unless keep_cached is False (their KV
        may not have been written, e.g. after a failed step). Tail blocks go first, so that at equal age
        the LRU evicts a request's last blocks before its (more shareable) first ones."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count < 0:
                raise RuntimeError(f"block {block_id} freed more often than referenced")
            if block.ref_count > 0:
                continue
            if block.hash is not None and keep_cached:
                self.evictable[block_id] = None
            else:
                if block.hash is not None:
                    self._uncache(block)
                self.free_block_ids.append(block_id)
        seq.block_table = []
        seq.num_sent_blocks = 0

    def _grow(self, seq: Sequence, num_tokens: int) -> None:
        table = seq.block_table
        for _ in range(self.blocks_needed(num_tokens) - len(table)):
            table.append(self._take_block())

    def _take_block(self) -> int:
        if self.free_block_ids:
            block_id = self.free_block_ids.popleft()
        else:
            block_id, _ = self.evictable.popitem(last=False)
            self._uncache(self.blocks[block_id])
            self.num_evictions += 1
        self.blocks[block_id].ref_count = 1
        return block_id

    def _uncache(self, block: Block) -> None:
        if block.hash is not None and self.cached.get(block.hash) == block.block_id:
            del self.cached[block.hash]
        block.hash = None
        block.token_ids = ()
