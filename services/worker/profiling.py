"""Start-up memory profiling on CUDA: how many KV blocks fit next to the weights and the peak activations."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from services.worker.attention_metadata import SeqChunk, build_attention_metadata
from services.worker.kv_cache import KVCache, kv_bytes_per_block
from services.worker.models.decoder import CausalDecoder

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MemoryProfile:
    total_bytes: int  # the device's memory
    weights_bytes: int  # allocated before the profile run (weights, rotary tables)
    activation_bytes: int  # peak of the profile run beyond weights and its own scratch KV cache
    other_bytes: int  # outside torch's allocator (CUDA context, libraries)
    kv_budget_bytes: int
    num_kv_blocks: int


@torch.inference_mode()
def profile_kv_blocks(
    model: CausalDecoder,
    block_size: int,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    max_model_len: int,
    gpu_memory_utilization: float,
    kv_dtype: torch.dtype | None = None,
) -> MemoryProfile:
    """Runs one forward of max_num_batched_tokens tokens (and logits for max_num_seqs rows) to measure the
    activation peak, then sizes the KV cache (of kv_dtype; None: the model's) to gpu_memory_utilization of the
    device."""
    param = next(model.parameters())
    device, dtype, cfg = param.device, param.dtype, model.cfg
    kv_dtype = kv_dtype or dtype
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    weights = torch.cuda.memory_allocated(device)
    # Sequences no longer than max_model_len (the rotary tables' length) that together fill the token budget.
    lengths = [min(max_model_len, max_num_batched_tokens - start) for start in range(0, max_num_batched_tokens, max_model_len)]
    chunks, next_block = [], 0
    for length in lengths:
        num_blocks = -(-length // block_size)
        chunks.append(SeqChunk(0, length, list(range(next_block, next_block + num_blocks))))
        next_block += num_blocks
    scratch = KVCache(cfg, next_block, block_size, kv_dtype, device)
    meta = build_attention_metadata(chunks, block_size, device)
    input_ids = torch.zeros(max_num_batched_tokens, dtype=torch.int64, device=device)
    hidden = model(input_ids, meta, scratch.layers)
    rows = min(max_num_seqs, max_num_batched_tokens)
    logits = model.compute_logits(hidden[-rows:])  # [rows, vocab] fp32
    logits.log_softmax(-1)  # room for the sampler's fp32 work on a full decode batch
    torch.cuda.synchronize(device)
    activation = torch.cuda.max_memory_allocated(device) - weights - scratch.num_bytes
    del scratch, meta, hidden, logits, input_ids
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    other = max(0, total - free - torch.cuda.memory_reserved(device))
    budget = int(total * gpu_memory_utilization) - weights - activation - other
    num_blocks = max(0, budget // kv_bytes_per_block(cfg, block_size, kv_dtype))
    profile = MemoryProfile(total, weights, activation, other, budget, num_blocks)
    log.info(
        "memory: total %.2f GiB, weights %.2f GiB, activations %.2f GiB, other %.2f GiB, KV %.2f GiB = %d blocks",
        total / 2**30, weights / 2**30, activation / 2**30, other / 2**30, budget / 2**30, num_blocks,
    )
    return profile
