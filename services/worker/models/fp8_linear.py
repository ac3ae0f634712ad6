"""FP8 projections of the decoder: float8_e4m3fn weights with one fp32 scale per output channel.

Two ways in: a bf16/fp16 model quantised after loading (`quantize_projections`, per-output-channel scales), or a
model built with FP8 projections before an FP8 checkpoint is copied into them (`fp8_projections`). Embeddings,
norms and the output projection keep the model dtype, unless asked: `quantize_lm_head` gives the output projection
an FP8 copy too (of the embedding matrix when tied, which stays in the model dtype for the token lookups).
"""

from __future__ import annotations

import torch
from torch import nn

from kernels._checks import FP8_DTYPE
from kernels.fp8_quant import quantize_fp8_rows_ref
from services.worker.ops import Ops

PROJECTIONS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


class Fp8Linear(nn.Module):
    """y = x · (weight · weight_scale[:, None])ᵀ + bias; weight [out, in] float8_e4m3fn, weight_scale [out] fp32."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype, ops: Ops) -> None:
        super().__init__()
        self.ops = ops
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8_DTYPE), requires_grad=False)
        self.weight_scale = nn.Parameter(torch.empty(out_features, dtype=torch.float32), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype), requires_grad=False) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.fp8_linear(x, self.weight, self.weight_scale, self.bias)

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        """silu_and_mul of this gate/up projection's output [..., 2D] → [..., D] (one launch where it can be)."""
        return self.ops.fp8_linear_silu_and_mul(x, self.weight, self.weight_scale, self.bias)

    @classmethod
    @torch.no_grad()
    def quantized(cls, linear: nn.Linear, ops: Ops) -> "Fp8Linear":
        """An FP8 copy of `linear` on its device, scaled per output channel (max |row| maps to 448)."""
        return cls.of_weight(linear.weight, linear.bias, ops)

    @classmethod
    @torch.no_grad()
    def of_weight(cls, w: torch.Tensor, bias: torch.Tensor | None, ops: Ops) -> "Fp8Linear":
        """An FP8 copy of the projection w [out, in] (+ bias [out]) on w's device, scaled per output channel."""
        with torch.device("meta"):
            out = cls(w.shape[1], w.shape[0], bias is not None, w.dtype, ops)
        out = out.to_empty(device=w.device)
        rows = max(1, (1 << 26) // max(1, w.shape[1]))  # chunks of 64M elements bound the fp32 scratch
        for first in range(0, w.shape[0], rows):
            q, scale = quantize_fp8_rows_ref(w[first : first + rows])
            out.weight[first : first + rows].copy_(q)
            out.weight_scale[first : first + rows].copy_(scale.view(-1))
        if bias is not None:
            out.bias.copy_(bias)
        return out


def _replace(model: nn.Module, make) -> int:  # noqa: ANN001 - make: (name, nn.Linear) → nn.Module
    """Replaces each decoder projection by make(linear); returns how many."""
    count = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in PROJECTIONS and isinstance(child, nn.Linear):
                setattr(module, child_name, make(child))
                count += 1
    return count


def quantize_projections(model: nn.Module, ops: Ops) -> int:
    """Quantises every projection of a loaded model to FP8, one at a time (the bf16 weight is freed as each is
    replaced, so the peak is the model plus one projection). Returns the number quantised."""
    return _replace(model, lambda linear: Fp8Linear.quantized(linear, ops))


def fp8_projections(model: nn.Module, ops: Ops) -> int:
    """Swaps every projection of a model on the meta device for an empty Fp8Linear of the same shape, ready for an
    FP8 checkpoint's tensors. Returns the number swapped."""
    def make(linear: nn.Linear) -> Fp8Linear:
        with torch.device("meta"):
            return Fp8Linear(linear.in_features, linear.out_features, linear.bias is not None, linear.weight.dtype,
                             ops)

    return _replace(model, make)


def quantize_lm_head(model: nn.Module, ops: Ops) -> None:
    """Makes the output projection of a loaded CausalDecoder an Fp8Linear, scaled per vocabulary row. A tied model
    keeps its embedding matrix for the token lookups and gains the FP8 copy as its lm_head."""
    weight = model.logits_weight  # [vocab, hidden]
    model.lm_head = Fp8Linear.of_weight(weight, None, ops)
