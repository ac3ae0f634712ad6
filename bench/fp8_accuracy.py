"""How close an FP8 model's logits stay to its bf16 (or fp32) original over a fixed prompt set.

Both engines prefill the same prompts in one step each; the last position of every prompt gives a row of logits.
Shared by bench/fp8.py (which reports the figures) and the tests (which hold thresholds on them).
"""

from __future__ import annotations

from typing import Any

import torch

from services.worker.attention_metadata import SeqChunk
from services.worker.engine import WorkerEngine


def fixed_prompts(vocab_size: int, num_prompts: int = 16, first_len: int = 8, seed: int = 0) -> list[list[int]]:
    """num_prompts prompts of first_len, first_len + 3, ... random token ids (the same for every call)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab_size, (first_len + 3 * i,), generator=g).tolist() for i in range(num_prompts)]


@torch.inference_mode()
def last_logits(engine: WorkerEngine, prompts: list[list[int]]) -> torch.Tensor:
    """fp32 logits [len(prompts), vocab] of each prompt's last position, all prompts prefilled in one forward."""
    model_runner = engine.runner.executor
    block_size = engine.info.block_size
    chunks, next_block = [], 0
    for prompt in prompts:
        num_blocks = -(-len(prompt) // block_size)
        chunks.append(SeqChunk(0, len(prompt), list(range(next_block, next_block + num_blocks))))
        next_block += num_blocks
    if next_block > engine.info.num_kv_blocks:
        raise ValueError(f"the prompts need {next_block} KV blocks, the engine has {engine.info.num_kv_blocks}")
    tokens = [t for prompt in prompts for t in prompt]
    return model_runner.forward(tokens, chunks, list(range(len(prompts)))).float().cpu()


def logit_agreement(reference: torch.Tensor, test: torch.Tensor) -> dict[str, Any]:
    """Per-row cosine similarity (min and mean), top-1 agreement (fraction of rows with the same argmax) and
    KL(reference || test) of the softmax distributions (mean and max, in nats)."""
    ref, out = reference.double(), test.double()
    cosine = torch.nn.functional.cosine_similarity(ref, out, dim=-1)
    log_p, log_q = ref.log_softmax(-1), out.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return {
        "rows": ref.shape[0],
        "cosine_min": round(cosine.min().item(), 6),
        "cosine_mean": round(cosine.mean().item(), 6),
        "top1_agreement": round((ref.argmax(-1) == out.argmax(-1)).double().mean().item(), 4),
        "kl_mean": float(f"{kl.mean().item():.3g}"),
        "kl_max": float(f"{kl.max().item():.3g}"),
    }
