"""Gumbel noise for the exponential race: `argmax(logits + G)` with G = -log(E), E ~ Exp(1), samples
`softmax(logits)` exactly, one independent draw per row.

Seeded rows take their noise from a counter-based hash of (key, token id) computed with integer tensor ops,
where the key mixes the request's seed with its draw position (number of tokens generated so far). The noise
of a seeded row therefore depends on nothing but (seed, position, vocab size): not on batch-mates, row order,
device or any generator's state, so the same request gives the same tokens on CPU and GPU alike. Unseeded rows
share one batched `exponential_` draw from the device's default generator.
"""

from __future__ import annotations

import torch

_MASK32 = (1 << 32) - 1
_MASK64 = (1 << 64) - 1

# Odd 31-bit multipliers: a value below 2**32 times one of them stays below 2**63, so the int64 products
# never overflow and the hash gives the same bits on every device.
_MUL_A = 0x7FEB352D
_MUL_B = 0x21F0AAAD


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def draw_key(seed: int, position: int) -> tuple[int, int]:
    """Two 32-bit keys for the draw at `position` (number of tokens generated before it) of a seeded request."""
    z = _splitmix64(_splitmix64(seed) ^ position)
    return z & _MASK32, z >> 32


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """A bijective avalanche on int64 tensors holding values in [0, 2**32)."""
    h = h ^ (h >> 16)
    h = (h * _MUL_A) & _MASK32
    h = h ^ (h >> 15)
    h = (h * _MUL_B) & _MASK32
    return h ^ (h >> 15)


def seeded_gumbel(keys: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Gumbel noise [num_keys, vocab_size] fp32 from keys [num_keys, 2] int64 (from `draw_key`)."""
    tokens = torch.arange(vocab_size, device=keys.device, dtype=torch.int64)
    h = _mix32(tokens.unsqueeze(0) ^ keys[:, :1])  # [num_keys, vocab_size]
    h = _mix32(h ^ keys[:, 1:])
    # float64 keeps every hash bit and makes the two logs round the same way on CPU and GPU.
    uniform = (h.to(torch.float64) + 0.5) * 2.0**-32  # in (0, 1)
    return uniform.log_().neg_().log_().neg_().to(torch.float32)


def unseeded_gumbel(num_rows: int, vocab_size: int, device: torch.device) -> torch.Tensor:
    """Gumbel noise [num_rows, vocab_size] fp32 from the device's default generator."""
    exp = torch.empty(num_rows, vocab_size, device=device, dtype=torch.float32).exponential_()
    # An exact zero would give +inf noise, and +inf plus a masked -inf logit is NaN, which argmax would pick.
    return exp.clamp_min_(torch.finfo(torch.float32).tiny).log_().neg_()
