"""Argument checks shared by the kernel launchers: every failure is a ValueError or TypeError with a message."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FP8_DTYPE = torch.float8_e4m3fn  # FP8 weights and FP8 KV caches
FP8_MAX = 448.0  # largest finite float8_e4m3fn
# A KV cache holds the model's dtype, or float8_e4m3fn scaled per layer (--kv-cache-dtype fp8).
KV_CACHE_DTYPES = (*FLOAT_DTYPES, FP8_DTYPE)


def check_tensor(
    name: str,
    t: object,
    ndim: int,
    dtypes: tuple[torch.dtype, ...] | None = None,
) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d) for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({allowed}), got {t.dtype}")
    return t


def check_same_device(**tensors: torch.Tensor) -> torch.device:
    devices = {name: t.device for name, t in tensors.items()}
    first = next(iter(devices.values()))
    for name, dev in devices.items():
        if dev != first:
            raise ValueError(f"all tensors must be on one device: {name} is on {dev}, expected {first}")
    return first


def check_inner_contiguous(name: str, t: torch.Tensor) -> None:
    """Kernels vectorise along the last dimension, so it must be dense (stride 1)."""
    if t.numel() > 0 and t.stride(-1) != 1:
        raise ValueError(f"{name} must have stride 1 in its last dimension, got strides {t.stride()}")


def check_shape(name: str, t: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(t.shape)}")


def check_like(name: str, t: torch.Tensor, like: torch.Tensor) -> None:
    """t is a buffer that takes results shaped as `like`: its shape, dtype and device, with a dense last dimension."""
    check_tensor(name, t, like.dim(), (like.dtype,))
    check_shape(name, t, tuple(like.shape))
    check_inner_contiguous(name, t)
    if t.device != like.device:
        raise ValueError(f"all tensors must be on one device: {name} is on {t.device}, expected {like.device}")


def check_kv_cache(
    key_cache: torch.Tensor, value_cache: torch.Tensor, dtype: torch.dtype | None = None
) -> tuple[int, int, int, int]:
    """Returns (num_blocks, block_size, num_kv_heads, head_dim) of a [num_blocks, block_size, kv_heads, d] cache."""
    check_tensor("key_cache", key_cache, 4, KV_CACHE_DTYPES)
    check_tensor("value_cache", value_cache, 4, KV_CACHE_DTYPES)
    if key_cache.shape != value_cache.shape:
        raise ValueError(
            f"key_cache and value_cache must have one shape, got {tuple(key_cache.shape)} and "
            f"{tuple(value_cache.shape)}"
        )
    if key_cache.stride() != value_cache.stride():
        raise ValueError("key_cache and value_cache must have the same strides")
    if key_cache.dtype != value_cache.dtype:
        raise TypeError(f"key_cache and value_cache dtypes differ: {key_cache.dtype} and {value_cache.dtype}")
    if dtype is not None and key_cache.dtype not in (dtype, FP8_DTYPE):
        raise TypeError(f"the KV cache dtype {key_cache.dtype} must match the query dtype {dtype} (or be FP8)")
    check_inner_contiguous("key_cache", key_cache)
    check_inner_contiguous("value_cache", value_cache)
    return tuple(key_cache.shape)  # type: ignore[return-value]


def check_launchable(device: torch.device) -> None:
    """Triton runs on CUDA, or on CPU tensors only under the interpreter."""
    import os

    if device.type == "cuda":
        return
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return
    raise ValueError(
        f"Triton kernels need CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got device {device}; "
        "call the *_ref function on CPU"
    )
