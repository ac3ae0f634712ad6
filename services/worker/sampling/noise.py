"""Keys of the Gumbel noise for the exponential race: `argmax(logits + G)` with G = -log(E), E ~ Exp(1), samples
`softmax(logits)` exactly, one independent draw per row.

A row's noise is a counter-based hash of (key, token id) (`kernels.gumbel_race`: one Triton pass that also takes
the argmax on CUDA, the same bits from torch ops elsewhere), so the key alone decides it. A seeded row's key mixes
the request's seed with its draw position (number of tokens generated so far): its noise depends on nothing but
(seed, position, vocab size), not on batch-mates, row order, device or any generator's state, so the same request
gives the same tokens on CPU and GPU alike. An unseeded row's key is drawn afresh for each row and step from the
device's default generator, so its draws are independent across rows and steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

_MASK32 = (1 << 32) - 1


def _splitmix64(z: np.ndarray) -> np.ndarray:
    # uint64 lanes wrap modulo 2**64, as splitmix64's arithmetic does.
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def draw_keys(seeds: Sequence[int], positions: Sequence[int]) -> np.ndarray:
    """Two 32-bit keys for each draw at positions[i] (number of tokens generated before it) of a request seeded
    with seeds[i], as [num_pairs, 2] int64, in one pass of array arithmetic (a batch of seeded rows costs no per-row
    Python hashing). Seeds and positions lie in [0, 2**63) (SamplingParams checks the seeds)."""
    z = _splitmix64(_splitmix64(np.asarray(seeds, dtype=np.uint64)) ^ np.asarray(positions, dtype=np.uint64))
    return np.stack([z & np.uint64(_MASK32), z >> np.uint64(32)], axis=1).astype(np.int64)


def draw_key(seed: int, position: int) -> tuple[int, int]:
    """`draw_keys` of one draw."""
    low, high = draw_keys([seed], [position])[0].tolist()
    return low, high


def random_keys(num_rows: int, device: torch.device) -> torch.Tensor:
    """[num_rows, 2] int64 keys, uniform over [0, 2**32), from the device's default generator (no sync)."""
    return torch.randint(0, 2**32, (num_rows, 2), dtype=torch.int64, device=device)
