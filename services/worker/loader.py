"""Builds the decoder on the meta device and fills it straight on the target device.

Real weights are copied tensor by tensor from safetensors (`safe_open` maps the file; each tensor is read once
and copied into its parameter), so the host never holds a second full copy of the model. Every problem (no
weights, a missing shard, an unknown or missing tensor, a wrong shape) is refused at start, naming the file and
the tensor. Under tensor parallelism each rank reads only its slices of the tensors it divides (see
`DecoderShard.checkpoint_slice`): safetensors maps the file, so the other ranks' rows are never read.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from services.common.errors import InvalidArgument
from services.common.progress import Progress
from services.worker.checkpoint_files import weight_files
from services.worker.model_config import ModelConfig
from services.worker.models.decoder import CausalDecoder, fused_shards
from services.worker.models.fp8_linear import fp8_projections
from services.worker.parallel.shard import TensorSlice
from services.worker.ops import Ops
from services.worker.parallel.group import SINGLE, TensorParallelGroup

_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some older checkpoints saved
# Tensors of FP8 checkpoints that FlashStream reads past: static activation scales (activations are quantised per
# token at run time, finer than one scale per tensor).
_FP8_IGNORED_SUFFIXES = (".input_scale", ".input_scale_ub")
# Per-layer KV-cache calibration: what an FP8 KV cache divides K and V by. Checkpoint suffix → the attention
# attributes it sets: compressed-tensors' kv_cache_scheme, then AutoFP8's output scales of k_proj and v_proj, then
# the single kv_scale of older FP8-KV checkpoints.
_KV_SCALE_SUFFIXES = {
    ".self_attn.k_scale": ("k_scale",),
    ".self_attn.v_scale": ("v_scale",),
    ".self_attn.k_proj.output_scale": ("k_scale",),
    ".self_attn.v_proj.output_scale": ("v_scale",),
    ".self_attn.kv_scale": ("k_scale", "v_scale"),
}


def build_empty_model(cfg: ModelConfig, ops: Ops, dtype: torch.dtype, device: torch.device,
                      tp: TensorParallelGroup = SINGLE) -> CausalDecoder:
    """The decoder (this rank's share of it) with uninitialised parameters of `dtype` on `device` (nothing is
    allocated twice)."""
    with torch.device("meta"):
        model = CausalDecoder(cfg, ops, tp).to(dtype)
        if cfg.quantization == "fp8":
            fp8_projections(model, ops)  # after .to(dtype), which would cast FP8 weights and their fp32 scales
    return model.to_empty(device=device).eval().requires_grad_(False)


def _targets(model: CausalDecoder) -> dict[str, tuple[torch.Tensor, int, int]]:
    """Checkpoint tensor name → (parameter, first row, number of rows) it fills."""
    shards = fused_shards(model.cfg)
    targets: dict[str, tuple[torch.Tensor, int, int]] = {}
    for name, param in model.named_parameters():
        parts = name.split(".")
        fused = [(ckpt, first, rows) for ckpt, (fname, first, rows) in shards.items() if fname in parts]
        if not fused:
            targets[name] = (param, 0, param.shape[0])
            continue
        for ckpt, first, rows in fused:
            targets[".".join(ckpt if p in ("qkv_proj", "gate_up_proj") else p for p in parts)] = (param, first, rows)
    return targets


def load_weights(model: CausalDecoder, folder: str | Path) -> None:
    """Copies every tensor of the checkpoint into its parameter; refuses unknown, missing or misshapen ones."""
    targets = _targets(model)
    loaded: set[str] = set()
    tied = model.cfg.tie_word_embeddings
    files = weight_files(folder)
    with Progress(sum(p.stat().st_size for p in files), "loading weights", "MB", scale=1e6) as progress:
        for path in files:
            _load_file(path, model, targets, loaded, tied, progress)
    missing = sorted(set(targets) - loaded)
    if missing:
        raise InvalidArgument(f"{folder}: tensor {missing[0]} is missing from the checkpoint ({len(missing)} missing)")


def _load_file(path: Path, model: CausalDecoder, targets: dict[str, tuple[torch.Tensor, int, int]], loaded: set[str],
               tied: bool, progress: Progress) -> None:
    """Copies one safetensors file's tensors into their parameters, adding their names to `loaded`."""
    fp8 = model.cfg.quantization == "fp8"
    with safe_open(str(path), framework="pt", device="cpu") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            if name.endswith(_IGNORED_SUFFIXES) or (tied and name == "lm_head.weight"):
                continue
            if fp8 and name.endswith(_FP8_IGNORED_SUFFIXES):
                continue
            suffix = next((sfx for sfx in _KV_SCALE_SUFFIXES if name.endswith(sfx)), None)
            if suffix is not None:
                _set_kv_scale(model, path, name, name[: -len(suffix)] + ".self_attn", _KV_SCALE_SUFFIXES[suffix],
                              f.get_tensor(name))
                continue
            if name not in targets:
                raise InvalidArgument(f"{path}: tensor {name} does not belong to a {model.cfg.architecture}")
            param, first, rows = targets[name]
            expected = (rows, *param.shape[1:])
            piece = model.shard.checkpoint_slice(name)
            whole = expected if piece is None else _whole_shape(expected, piece)
            shape = tuple(f.get_slice(name).get_shape())
            if name.endswith(".weight_scale") and shape in ((), (1,), (rows, 1)):
                shape = expected  # one scale per tensor (broadcast to its rows) or per channel, as a column
            if shape != whole:
                raise InvalidArgument(f"{path}: tensor {name} has shape {shape}, expected {whole}")
            if not model.shard.adds_bias(name):
                param.data[first : first + rows].zero_()
                loaded.add(name)
                continue
            tensor = f.get_tensor(name) if piece is None else _read_slice(f, name, piece)
            if param.dtype == torch.float8_e4m3fn and tensor.dtype != param.dtype:
                raise InvalidArgument(f"{path}: tensor {name} has dtype {tensor.dtype}, expected {param.dtype} "
                                      "(config.json declares an FP8 checkpoint)")
            param.data[first : first + rows].copy_(tensor.reshape(-1) if param.dim() == 1 else tensor)
            loaded.add(name)
            progress.advance(tensor.numel() * tensor.element_size())


def _whole_shape(local: tuple[int, ...], piece: TensorSlice) -> tuple[int, ...]:
    """The checkpoint shape a rank's `local` share [rows, ...] of a tensor is cut from."""
    whole = list(local)
    whole[piece.dim] = piece.whole
    return tuple(whole)


def _read_slice(f, name: str, piece: TensorSlice) -> torch.Tensor:  # noqa: ANN001 - a safe_open handle
    """Reads only the slice of tensor `name`: rows of [out] or [out, in], or columns of [out, in]."""
    stop = piece.start + piece.length
    view = f.get_slice(name)
    return view[piece.start : stop] if piece.dim == 0 else view[:, piece.start : stop]


def _set_kv_scale(model: CausalDecoder, path: Path, name: str, module_name: str, attrs: tuple[str, ...],
                  tensor: torch.Tensor) -> None:
    """Sets an attention layer's k_scale and/or v_scale (a float: CUDA graphs and kernels take it as a constant)."""
    try:
        attention = model.get_submodule(module_name)
    except AttributeError:
        raise InvalidArgument(f"{path}: tensor {name} does not belong to a {model.cfg.architecture}") from None
    if tensor.numel() != 1:
        raise InvalidArgument(f"{path}: tensor {name} must be one positive scale, got shape {tuple(tensor.shape)}")
    value = float(tensor.float())
    if not value > 0:
        raise InvalidArgument(f"{path}: tensor {name} must be one positive scale, got {value}")
    for attr in attrs:
        setattr(attention, attr, value)


def init_dummy_weights(model: CausalDecoder, seed: int = 0, std: float = 0.02) -> None:
    """Random weights of the right shapes: norms at 1, the rest N(0, std) so activations stay finite."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    params = list(model.named_parameters())
    with Progress(sum(p.numel() * p.element_size() for _, p in params), "random weights", "MB",
                  scale=1e6) as progress:
        for name, param in params:
            if name.endswith("norm.weight"):
                param.data.fill_(1.0)
            elif name.endswith(".bias"):
                param.data.zero_()
            else:
                param.data.normal_(0.0, std, generator=gen)
            progress.advance(param.numel() * param.element_size())
