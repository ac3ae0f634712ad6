"""Rotary embedding tables (cos, sin) with the RoPE scalings the supported checkpoints use."""

from __future__ import annotations

import math

import torch

from services.worker.model_config import RopeScaling


def inv_frequencies(head_dim: int, theta: float, scaling: RopeScaling) -> torch.Tensor:
    """[head_dim // 2] fp32 inverse frequencies, scaled as Hugging Face's rope init functions scale them."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    if scaling.rope_type != "llama3":
        return inv_freq
    # Llama 3: long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / scaling.low_freq_factor
    high_freq_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rotary_tables(
    head_dim: int, theta: float, scaling: RopeScaling, max_position: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each [max_position, head_dim // 2] fp32, for the rotate-half layout."""
    inv_freq = inv_frequencies(head_dim, theta, scaling)
    positions = torch.arange(max_position, dtype=torch.float32)
    freqs = positions[:, None] * inv_freq[None, :]  # [max_position, head_dim // 2]
    return freqs.cos().to(device), freqs.sin().to(device)
