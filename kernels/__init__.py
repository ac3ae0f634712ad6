"""Triton kernels of the worker, each beside a plain torch reference of the same signature."""

from kernels.activation import silu_and_mul, silu_and_mul_ref
from kernels.cache_write import write_kv_cache, write_kv_cache_ref
from kernels.decode_attention import paged_decode_attention, paged_decode_attention_ref
from kernels.prefill_attention import paged_prefill_attention, paged_prefill_attention_ref
from kernels.rms_norm import rms_norm, rms_norm_ref
from kernels.rotary import apply_rotary, apply_rotary_ref

__all__ = [
    "apply_rotary",
    "apply_rotary_ref",
    "paged_decode_attention",
    "paged_decode_attention_ref",
    "paged_prefill_attention",
    "paged_prefill_attention_ref",
    "rms_norm",
    "rms_norm_ref",
    "silu_and_mul",
    "silu_and_mul_ref",
    "write_kv_cache",
    "write_kv_cache_ref",
]
