"""Embeddings for Worker.Embed: the mean of the decoder's final (normed) hidden states over each input's tokens.

A causal decoder has no pooling head; mean pooling over all positions is a documented, simple choice. The
inputs run as one prefill over a scratch KV cache that every layer shares (each layer writes its keys and values
and reads them back before the next layer overwrites them), so live sequences' blocks are never touched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from services.common.errors import InvalidArgument
from services.worker.attention_metadata import SeqChunk, build_attention_metadata
from services.worker.models.decoder import CausalDecoder


@torch.inference_mode()
def embed_tokens(
    model: CausalDecoder, inputs: Sequence[Sequence[int]], normalize: bool, max_len: int, block_size: int = 16
) -> list[list[float]]:
    """One vector [hidden] per input, in input order."""
    cfg = model.cfg
    for i, ids in enumerate(inputs):
        if not ids:
            raise InvalidArgument(f"input {i} has no tokens")
        if len(ids) > max_len:
            raise InvalidArgument(f"input {i} has {len(ids)} tokens, more than max_model_len {max_len}")
        if any(not 0 <= t < cfg.vocab_size for t in ids):
            raise InvalidArgument(f"input {i} has a token id outside the vocabulary of {cfg.vocab_size}")
    if not inputs:
        return []
    param = next(model.parameters())
    chunks, next_block = [], 0
    for ids in inputs:
        num_blocks = -(-len(ids) // block_size)
        chunks.append(SeqChunk(0, len(ids), list(range(next_block, next_block + num_blocks))))
        next_block += num_blocks
    shape = (next_block, block_size, cfg.num_kv_heads, cfg.head_dim)
    scratch = (
        torch.zeros(shape, dtype=param.dtype, device=param.device),
        torch.zeros(shape, dtype=param.dtype, device=param.device),
    )
    meta = build_attention_metadata(chunks, block_size, param.device)
    input_ids = torch.tensor([t for ids in inputs for t in ids], dtype=torch.int64, device=param.device)
    hidden = model(input_ids, meta, [scratch] * cfg.num_layers).float()  # [num_tokens, hidden]
    lengths = torch.tensor([len(ids) for ids in inputs], device=param.device)
    owner = torch.repeat_interleave(torch.arange(len(inputs), device=param.device), lengths)
    sums = torch.zeros(len(inputs), hidden.shape[1], device=param.device).index_add_(0, owner, hidden)
    vectors = sums / lengths[:, None]
    if normalize:
        vectors = F.normalize(vectors, dim=-1)
    return vectors.cpu().tolist()
