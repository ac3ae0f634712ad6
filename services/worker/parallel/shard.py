"""How one rank's share of a decoder is cut from the whole model, and which slice of each checkpoint tensor it reads.

Attention: each rank runs num_heads / tp query heads. Key/value heads are divided too when num_kv_heads % tp == 0,
so every rank keeps whole GQA groups (its query heads and exactly the KV heads they read). Otherwise, when
tp % num_kv_heads == 0, each rank holds the one KV head its query heads read, replicated on tp / num_kv_heads
ranks. q/k/v and gate/up are column-parallel (rows of the checkpoint's [out, in] weights); o_proj and down_proj
are row-parallel (columns), their partial outputs summed by one all-reduce each. The lm_head is divided by
vocabulary rows (ceil(vocab / tp) per rank, the last rank's block shorter), its logits all-gathered. Embeddings
and norms are whole on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

from services.common.errors import InvalidArgument
from services.worker.model_config import ModelConfig

_COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "lm_head")
_ROW_PARALLEL = ("o_proj", "down_proj")


class TensorSlice(NamedTuple):
    """The part of a checkpoint tensor one rank reads: `length` indices from `start` along `dim`, of `whole`."""

    dim: int
    start: int
    length: int
    whole: int


@dataclass(frozen=True, slots=True)
class DecoderShard:
    rank: int
    size: int
    full: ModelConfig  # the whole model
    local: ModelConfig  # this rank's share: heads, KV heads and intermediate size divided; vocab_size whole
    kv_head_start: int  # first KV head of the checkpoint this rank holds
    vocab_widths: tuple[int, ...]  # lm_head rows (vocabulary ids) of each rank, in rank order

    @classmethod
    def of(cls, cfg: ModelConfig, rank: int = 0, size: int = 1) -> DecoderShard:
        """Refuses a size that would split a head, a GQA group across KV heads, or the MLP unevenly."""
        if cfg.num_heads % size:
            raise InvalidArgument(f"tensor-parallel size {size} must divide num_attention_heads {cfg.num_heads}")
        if cfg.intermediate_size % size:
            raise InvalidArgument(f"tensor-parallel size {size} must divide intermediate_size {cfg.intermediate_size}")
        if cfg.num_kv_heads % size == 0:
            num_kv_heads = cfg.num_kv_heads // size
            kv_head_start = rank * num_kv_heads
        elif size % cfg.num_kv_heads == 0:
            num_kv_heads = 1  # replicated: tp / num_kv_heads ranks share each KV head
            kv_head_start = rank // (size // cfg.num_kv_heads)
        else:
            raise InvalidArgument(f"tensor-parallel size {size} must divide num_key_value_heads {cfg.num_kv_heads} "
                                  f"or be a multiple of it")
        block = -(-cfg.vocab_size // size)
        widths = tuple(max(0, min(block, cfg.vocab_size - r * block)) for r in range(size))
        local = cfg if size == 1 else replace(cfg, num_heads=cfg.num_heads // size, num_kv_heads=num_kv_heads,
                                              intermediate_size=cfg.intermediate_size // size)
        return cls(rank, size, cfg, local, kv_head_start, widths)

    @property
    def vocab_start(self) -> int:
        return sum(self.vocab_widths[: self.rank])

    @property
    def vocab_width(self) -> int:
        return self.vocab_widths[self.rank]

    def checkpoint_slice(self, name: str) -> TensorSlice | None:
        """The slice of checkpoint tensor `name` this rank holds; None: the whole tensor."""
        if self.size == 1:
            return None
        parts = name.split(".")
        module, kind = (parts[-2], parts[-1]) if len(parts) >= 2 else ("", name)
        local, full = self.local, self.full
        if module in _ROW_PARALLEL:
            if kind != "weight":
                return None  # a row-parallel bias is whole (see `adds_bias`)
            if module == "o_proj":
                return TensorSlice(1, self.rank * local.q_size, local.q_size, full.q_size)
            return TensorSlice(1, self.rank * local.intermediate_size, local.intermediate_size, full.intermediate_size)
        if module not in _COLUMN_PARALLEL:
            return None
        if module == "q_proj":
            return TensorSlice(0, self.rank * local.q_size, local.q_size, full.q_size)
        if module in ("k_proj", "v_proj"):
            return TensorSlice(0, self.kv_head_start * full.head_dim, local.kv_size, full.kv_size)
        if module == "lm_head":
            return TensorSlice(0, self.vocab_start, self.vocab_width, full.vocab_size)
        return TensorSlice(0, self.rank * local.intermediate_size, local.intermediate_size, full.intermediate_size)

    def adds_bias(self, name: str) -> bool:
        """Whether this rank adds bias `name`: a row-parallel layer's bias is added by rank 0 alone, so the
        all-reduce sums it once."""
        parts = name.split(".")
        return not (self.rank and len(parts) >= 2 and parts[-2] in _ROW_PARALLEL and parts[-1] == "bias")
