"""One causal decoder for Llama 2/3, Mistral, Qwen2 and Qwen3; the differences are flags of ModelConfig.

Parameter names follow the Hugging Face checkpoints, except that q/k/v and gate/up projections are fused into
one matrix each (`qkv_proj`, `gate_up_proj`) so a step runs two GEMMs fewer per layer; the loader fills them
shard by shard (see `FUSED_SHARDS`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from services.worker.attention_metadata import AttentionMetadata
from services.worker.model_config import ModelConfig
from services.worker.models.fp8_linear import Fp8Linear
from services.worker.ops import Ops
from services.worker.parallel.group import SINGLE, TensorParallelGroup
from services.worker.parallel.shard import DecoderShard

KVCache = tuple[torch.Tensor, torch.Tensor]  # ([num_blocks, block_size, num_kv_heads, head_dim],) * 2


def fused_shards(cfg: ModelConfig) -> dict[str, tuple[str, int, int]]:
    """Checkpoint projection name → (fused name, first row, number of rows) inside the fused weight."""
    q, kv, inter = cfg.q_size, cfg.kv_size, cfg.intermediate_size
    return {
        "q_proj": ("qkv_proj", 0, q),
        "k_proj": ("qkv_proj", q, kv),
        "v_proj": ("qkv_proj", q + kv, kv),
        "gate_proj": ("gate_up_proj", 0, inter),
        "up_proj": ("gate_up_proj", inter, inter),
    }


# Projections whose weights a CUDA worker stores input-major (see `store_projections_input_major`).
# qkv_proj stays in the default layout: in the transposed one cuBLAS picks split-K plus a reduce for it, the
# opposite of the others, and it ran slower per call.
INPUT_MAJOR_PROJECTIONS = ("o_proj", "gate_up_proj", "down_proj")


def store_projections_input_major(model: nn.Module) -> int:
    """Re-lays each decoder projection's weight [out, in] as the transpose of a contiguous [in, out] matrix.

    The parameter keeps its shape and values, so every F.linear call is unchanged, but cuBLAS then multiplies
    row-major by row-major. At batch 1 on the H100 that picks kernels without the split-K reduce launch that the
    default layout gets for narrow outputs, and each of these projections ran faster per call on 8B shapes
    (bench/engine.py --gemv-probe). Call once, after the weights are loaded. Returns the number re-laid."""
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in INPUT_MAJOR_PROJECTIONS:
            module.weight.data = module.weight.data.t().contiguous().t()  # [out, in] with strides (1, out)
            count += 1
    return count


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, ops: Ops) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps
        self.ops = ops

    def forward(  # noqa: ANN201 - one or two tensors
        self, x: torch.Tensor, residual: torch.Tensor | None = None, summed_out: torch.Tensor | None = None
    ):
        return self.ops.rms_norm(x, self.weight, self.eps, residual, summed_out=summed_out)


class Attention(nn.Module):
    """cfg: this rank's share (its heads and KV heads); o_proj's partial outputs are summed over the ranks."""

    def __init__(self, cfg: ModelConfig, ops: Ops, tp: TensorParallelGroup = SINGLE) -> None:
        super().__init__()
        self.cfg = cfg
        self.ops = ops
        self.tp = tp
        self.scale = cfg.head_dim**-0.5
        # What an FP8 KV cache stores is K / k_scale and V / v_scale (the checkpoint's calibration, else 1); a cache
        # of the model's dtype ignores them.
        self.k_scale = 1.0
        self.v_scale = 1.0
        self.qkv_proj = nn.Linear(cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.q_size, cfg.hidden_size, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, ops)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, ops)

    def forward(
        self, x: torch.Tensor, meta: AttentionMetadata, kv_cache: KVCache, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        q = self.project(x, meta, kv_cache, rope)
        attn = self.attend(q, meta, kv_cache).view(x.shape[0], self.cfg.q_size)
        return self.tp.all_reduce(self.o_proj(attn))  # [num_tokens, hidden]

    def project(
        self, x: torch.Tensor, meta: AttentionMetadata, kv_cache: KVCache, rope: tuple[torch.Tensor, torch.Tensor],
        q_out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [num_tokens, hidden] → rotated q [num_tokens, num_heads, head_dim] (into q_out when given); k and v go
        to their cache slots (meta.positions and meta.slot_mapping are all it reads of the metadata)."""
        cfg, ops = self.cfg, self.ops
        num_tokens = x.shape[0]
        qkv = self.qkv_proj(x)  # [num_tokens, q_size + 2 * kv_size]
        q, k, v = qkv.split([cfg.q_size, cfg.kv_size, cfg.kv_size], dim=-1)
        q = q.view(num_tokens, cfg.num_heads, cfg.head_dim)
        k = k.view(num_tokens, cfg.num_kv_heads, cfg.head_dim)
        v = v.view(num_tokens, cfg.num_kv_heads, cfg.head_dim)
        if cfg.qk_norm:
            # Qwen3 normalises every head of q and k before the rotation.
            q = self.q_norm(q.reshape(-1, cfg.head_dim)).view(num_tokens, cfg.num_heads, cfg.head_dim)
            k = self.k_norm(k.reshape(-1, cfg.head_dim)).view(num_tokens, cfg.num_kv_heads, cfg.head_dim)
        key_cache, value_cache = kv_cache
        # One launch: q rotated into a new tensor (or q_out), the rotated k and v stored at their cache slots.
        return ops.apply_rotary_and_write_kv(q, k, v, meta.positions, rope[0], rope[1], key_cache, value_cache,
                                             meta.slot_mapping, q_out=q_out, **self.kv_scales)

    @property
    def kv_scales(self) -> dict[str, float]:
        return {"k_scale": self.k_scale, "v_scale": self.v_scale}

    def attend(
        self, q: torch.Tensor, meta: AttentionMetadata, kv_cache: KVCache, out: torch.Tensor | None = None,
        checked: bool = False,
    ) -> torch.Tensor:
        """q [num_tokens, num_heads, head_dim] → attention output of the same shape (into `out` when given).
        checked: an earlier layer of this step passed the launchers' argument checks with this metadata and with q,
        out and caches laid out as these (PiecewiseGraphs.run: the same buffers; CausalDecoder.forward: each layer's
        q and out of the same shape, strides and dtype; both: caches of one allocation), so the launches skip them."""
        ops, kwargs = self.ops, {**self.kv_scales, "checked": checked}
        key_cache, value_cache = kv_cache
        if meta.is_decode:
            return ops.decode_attention(
                q, key_cache, value_cache, meta.block_tables, meta.context_lens, self.scale,
                max_context_len=meta.max_context_len, num_splits=meta.decode_num_splits, out=out, **kwargs,
            )
        if meta.num_decode_seqs:
            d = meta.num_decode_seqs  # one token each, so also the number of decode rows of q
            out = torch.empty_like(q) if out is None else out
            ops.decode_attention(q[:d], key_cache, value_cache, meta.block_tables[:d], meta.context_lens[:d],
                                 self.scale, max_context_len=meta.decode_max_context_len,
                                 num_splits=meta.decode_num_splits, out=out[:d], config=meta.decode_config, **kwargs)
            ops.prefill_attention(q[d:], key_cache, value_cache, meta.prefill_block_tables,
                                  meta.prefill_query_start_loc, meta.prefill_context_lens, self.scale, causal=True,
                                  max_query_len=meta.max_query_len, out=out[d:], **kwargs)
            return out
        return ops.prefill_attention(
            q, key_cache, value_cache, meta.block_tables, meta.query_start_loc, meta.context_lens, self.scale,
            causal=True, max_query_len=meta.max_query_len, out=out, **kwargs,
        )


class MLP(nn.Module):
    """gate/up column-parallel, down row-parallel: one all-reduce per layer."""

    def __init__(self, cfg: ModelConfig, ops: Ops, tp: TensorParallelGroup = SINGLE) -> None:
        super().__init__()
        self.ops = ops
        self.tp = tp
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj
        if isinstance(gate_up, Fp8Linear):
            act = gate_up.silu_and_mul(x)  # one launch with the projection where its kernel allows
        else:
            act = self.ops.silu_and_mul(gate_up(x))
        return self.tp.all_reduce(self.down_proj(act))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: Ops, tp: TensorParallelGroup = SINGLE) -> None:
        super().__init__()
        self.self_attn = Attention(cfg, ops, tp)
        self.mlp = MLP(cfg, ops, tp)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        meta: AttentionMetadata,
        kv_cache: KVCache,
        rope: tuple[torch.Tensor, torch.Tensor],
        checked: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """checked: as `Attention.attend` takes it."""
        q, residual = self.before_attention(x, residual, meta, kv_cache, rope)
        return self.after_attention(self.self_attn.attend(q, meta, kv_cache, checked=checked), residual)

    def before_attention(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        meta: AttentionMetadata,
        kv_cache: KVCache,
        rope: tuple[torch.Tensor, torch.Tensor],
        q_out: torch.Tensor | None = None,
        residual_out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, residual) [num_tokens, hidden] each → (rotated q [num_tokens, num_heads, head_dim], residual).
        q_out and residual_out: where those two go instead of new tensors (the piecewise graphs' buffers)."""
        # The residual add is fused into the next norm: (normed, x + residual).
        if residual is None:
            residual, x = x, self.input_layernorm(x)
            if residual_out is not None:
                residual = residual_out.copy_(residual)
        else:
            x, residual = self.input_layernorm(x, residual, summed_out=residual_out)
        return self.self_attn.project(x, meta, kv_cache, rope, q_out=q_out), residual

    def after_attention(self, attn: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """attention output [num_tokens, num_heads, head_dim] → (MLP output, residual), [num_tokens, hidden] each."""
        x = self.self_attn.tp.all_reduce(self.self_attn.o_proj(attn.view(attn.shape[0], -1)))
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class DecoderModel(nn.Module):
    def __init__(self, cfg: ModelConfig, ops: Ops, tp: TensorParallelGroup = SINGLE) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, ops, tp) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops)


class CausalDecoder(nn.Module):
    """Token ids in, final hidden states out; `compute_logits` maps chosen rows to the vocabulary.

    Under tensor parallelism (tp.size > 1) this is one rank's share (see `DecoderShard`): `cfg` holds its head,
    KV head and intermediate counts, so the KV cache and graphs built from `cfg` hold its share too."""

    def __init__(self, cfg: ModelConfig, ops: Ops, tp: TensorParallelGroup = SINGLE) -> None:
        super().__init__()
        self.tp = tp
        self.shard = DecoderShard.of(cfg, tp.rank, tp.size)
        cfg = self.shard.local
        self.cfg = cfg
        self.ops = ops
        self.model = DecoderModel(cfg, ops, tp)
        # Tied checkpoints reuse the embedding matrix; no second parameter exists to keep in sync.
        self.lm_head = (None if cfg.tie_word_embeddings
                        else nn.Linear(cfg.hidden_size, self.shard.vocab_width, bias=False))
        self.rope: tuple[torch.Tensor, torch.Tensor] | None = None  # (cos, sin) [max_position, head_dim // 2]

    def set_rope(self, cos: torch.Tensor, sin: torch.Tensor) -> None:
        self.rope = (cos, sin)

    def forward(self, input_ids: torch.Tensor, meta: AttentionMetadata, kv_caches: list[KVCache]) -> torch.Tensor:
        """input_ids [num_tokens] → final normed hidden states [num_tokens, hidden]."""
        if self.rope is None:
            raise RuntimeError("rotary tables are not set; call set_rope first")
        x = self.model.embed_tokens(input_ids)
        residual = None
        for index, (layer, kv_cache) in enumerate(zip(self.model.layers, kv_caches, strict=True)):
            # Every layer attends with the same metadata, q laid out alike and a cache laid out alike: the first
            # layer's launches check the arguments, the others skip the checks.
            x, residual = layer(x, residual, meta, kv_cache, self.rope, checked=index > 0)
        x, _ = self.model.norm(x, residual)
        return x

    @property
    def logits_weight(self) -> torch.Tensor:
        """[vocab_size, hidden]: the output projection (the embedding matrix when tied); under tensor parallelism
        this rank's rows of it, [shard.vocab_width, hidden]. Its float8_e4m3fn weight (without its scales) where
        the head was quantised: `project_logits` multiplies either kind."""
        if self.lm_head is not None:
            return self.lm_head.weight
        weight = self.model.embed_tokens.weight
        if self.tp.size == 1:
            return weight
        return weight[self.shard.vocab_start : self.shard.vocab_start + self.shard.vocab_width]

    def project_logits(self, hidden: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [num_rows, hidden] → this rank's logits [num_rows, shard.vocab_width] in the model dtype, into
        `out` where given; through the FP8 kernels where the head was quantised (`quantize_lm_head`)."""
        if isinstance(self.lm_head, Fp8Linear):
            logits = self.lm_head(hidden)
            return logits if out is None else out.copy_(logits)
        if out is None:
            return F.linear(hidden, self.logits_weight)
        return torch.matmul(hidden, self.logits_weight.t(), out=out)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [num_rows, hidden] → fp32 logits [num_rows, vocab_size] (every rank's columns, on every rank)."""
        return self.tp.gather_columns(self.project_logits(hidden).float(), self.shard.vocab_widths)
