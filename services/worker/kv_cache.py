"""The paged KV cache: per layer, a key and a value tensor [num_blocks, block_size, num_kv_heads, head_dim]."""

from __future__ import annotations

import torch

from services.worker.model_config import ModelConfig


def kv_bytes_per_block(cfg: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    """Bytes one block takes across all layers (keys and values)."""
    element_size = torch.empty((), dtype=dtype).element_size()
    return 2 * cfg.num_layers * block_size * cfg.num_kv_heads * cfg.head_dim * element_size


class KVCache:
    """One allocation for every layer's keys and values."""

    def __init__(
        self, cfg: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        # Zeroed so that entries a kernel reads but masks (padding rows, tile tails) are finite.
        self.data = torch.zeros(
            (cfg.num_layers, 2, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim), dtype=dtype, device=device
        )  # [num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim]
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = [(layer[0], layer[1]) for layer in self.data]

    @property
    def num_bytes(self) -> int:
        return self.data.numel() * self.data.element_size()
