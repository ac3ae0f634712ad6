"""Which weight quantisation a checkpoint uses, read from config.json's `quantization_config` (no torch here).

Served as they are: FP8 checkpoints whose projections hold a float8_e4m3fn `weight` beside a `weight_scale` (one
per output channel, or one per tensor) and optionally a static `input_scale`, in the layouts the FP8 Llama 3.1 and
Qwen checkpoints on the Hugging Face hub use: compressed-tensors (`float-quantized`), fbgemm_fp8, and the `fp8`
method of AutoFP8 without weight blocks. Anything else is refused at start, naming the scheme.
"""

from __future__ import annotations

import re
from typing import Any

from services.common.errors import InvalidArgument

FP8 = "fp8"
QUANTIZATIONS = ("", FP8)  # "": the checkpoint's own dtype (or its own quantisation)

# Modules a checkpoint may leave unquantised: the output projection, which FlashStream keeps in the model dtype.
_KEPT_MODULES = ("lm_head",)


def checkpoint_quantization(hf: dict[str, Any], source: str) -> str:
    """FP8 for a supported FP8 checkpoint, "" for an unquantised one; refuses every other scheme."""
    qc = hf.get("quantization_config") or hf.get("compression_config")
    if not qc:
        return ""
    method = str(qc.get("quant_method", "")).lower()
    if method == "compressed-tensors":
        _check_compressed_tensors(qc, source)
    elif method == "fbgemm_fp8":
        _check_kept(qc.get("modules_to_not_convert"), source)
    elif method == "fp8":
        if qc.get("weight_block_size"):
            raise InvalidArgument(f"{source}: quantization fp8 with weight_block_size {qc['weight_block_size']} "
                                  "(block-wise scales) is not supported; per-channel or per-tensor scales are")
        if str(qc.get("fmt", "e4m3")).lower() != "e4m3":
            raise InvalidArgument(f"{source}: quantization fp8 format {qc['fmt']!r} is not supported (only e4m3)")
        _check_kept(qc.get("ignored_layers") or qc.get("modules_to_not_convert"), source)
    else:
        raise InvalidArgument(f"{source}: quantization method {method or qc!r} is not supported (supported: "
                              "compressed-tensors FP8, fbgemm_fp8, fp8)")
    return FP8


def _check_compressed_tensors(qc: dict[str, Any], source: str) -> None:
    fmt = qc.get("format", "float-quantized")
    if fmt not in ("float-quantized", "naive-quantized"):
        raise InvalidArgument(f"{source}: compressed-tensors format {fmt!r} is not supported (float-quantized FP8)")
    groups = qc.get("config_groups") or {}
    if not groups:
        raise InvalidArgument(f"{source}: compressed-tensors quantization_config has no config_groups")
    for name, group in groups.items():
        weights = group.get("weights") or {}
        scheme = f"{weights.get('type')} {weights.get('num_bits')}-bit, strategy {weights.get('strategy')}"
        if weights.get("type") != "float" or weights.get("num_bits") != 8 or weights.get("strategy") not in (
                "channel", "tensor"):
            raise InvalidArgument(f"{source}: compressed-tensors group {name} quantises weights as {scheme}; only "
                                  "FP8 (float 8-bit) with channel or tensor scales is supported")
        acts = group.get("input_activations")
        if acts and (acts.get("type") != "float" or acts.get("num_bits") != 8):
            raise InvalidArgument(f"{source}: compressed-tensors group {name} quantises activations as "
                                  f"{acts.get('type')} {acts.get('num_bits')}-bit; only FP8 is supported")
    _check_kept(qc.get("ignore"), source)


def _check_kept(modules: list[str] | None, source: str) -> None:
    """A checkpoint that leaves projections inside the decoder unquantised is refused, naming one."""
    for entry in modules or []:
        pattern = entry[3:] if entry.startswith("re:") else re.escape(entry)
        if not any(re.fullmatch(pattern, kept) or re.fullmatch(f".*{pattern}", kept) for kept in _KEPT_MODULES):
            raise InvalidArgument(f"{source}: quantization leaves {entry!r} unquantised; only lm_head may be")
