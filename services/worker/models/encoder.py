"""A BERT-family encoder: bidirectional attention over packed variable-length inputs.

Parameter names are those of the Hugging Face checkpoints (`embeddings.*`, `encoder.layer.N.*`), so loading is a
plain name-for-name copy. Attention reuses the paged prefill kernel with causal=False: every layer writes its
keys and values into one scratch paged cache sized to the batch (layers run one after another, so they share
it) and attends over each input's whole context. On CPU the kernel's torch reference runs instead.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from services.common.errors import InvalidArgument
from services.worker.attention_metadata import AttentionMetadata
from services.worker.checkpoint_files import weight_files
from services.worker.models.encoder_config import EncoderConfig
from services.worker.ops import Ops

# Checkpoint tensors that an embedding encoder does not use: the pooler head, MLM heads, saved position ids.
_UNUSED_PREFIXES = ("pooler.", "cls.", "embeddings.position_ids")
_WRAPPER_PREFIXES = ("bert.", "model.")  # BertForMaskedLM and friends nest the encoder one level down


def _activation(name: str):  # noqa: ANN202 - a tensor function
    if name == "relu":
        return F.relu
    if name == "gelu":
        return F.gelu
    return lambda x: F.gelu(x, approximate="tanh")


class Embeddings(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(x + self.position_embeddings(positions))  # [num_tokens, hidden]


class SelfAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)


class DenseNorm(nn.Module):
    """dense, then LayerNorm of (dense output + residual): BERT's post-norm sublayer output."""

    def __init__(self, cfg: EncoderConfig, in_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class EncoderAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig, ops: Ops) -> None:
        super().__init__()
        self.cfg = cfg
        self.ops = ops
        self.scale = cfg.head_dim**-0.5
        self.self = SelfAttention(cfg)
        self.output = DenseNorm(cfg, cfg.hidden_size)

    def forward(self, x: torch.Tensor, meta: AttentionMetadata, scratch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        cfg, ops = self.cfg, self.ops
        shape = (x.shape[0], cfg.num_heads, cfg.head_dim)
        q = self.self.query(x).view(shape)  # [num_tokens, num_heads, head_dim]
        k = self.self.key(x).view(shape)
        v = self.self.value(x).view(shape)
        if not ops.uses_kernels:
            return self.output(padded_attention(q, k, v, meta, self.scale).reshape(x.shape), x)
        key_cache, value_cache = scratch
        ops.write_kv_cache(k, v, key_cache, value_cache, meta.slot_mapping)
        out = ops.prefill_attention(
            q, key_cache, value_cache, meta.block_tables, meta.query_start_loc, meta.context_lens, self.scale,
            causal=False, max_query_len=meta.max_query_len,
        )
        return self.output(out.reshape(x.shape), x)


def padded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata,
                     scale: float) -> torch.Tensor:
    """Bidirectional attention without kernels (CPU): the packed inputs padded to [num_seqs, max_len] and one
    SDPA call with a key-padding mask. The paged kernel's torch reference loops over sequences and gathers
    pages, many times slower for a batch of short inputs. q, k, v: [num_tokens, num_heads, head_dim]."""
    num_seqs, max_len = meta.num_seqs, meta.max_query_len
    lengths = meta.context_lens.long()  # [num_seqs]
    seq = torch.repeat_interleave(torch.arange(num_seqs, device=q.device), lengths)  # [num_tokens]
    pos = meta.positions

    def padded(t: torch.Tensor) -> torch.Tensor:  # [num_seqs, num_heads, max_len, head_dim]
        out = t.new_zeros(num_seqs, max_len, *t.shape[1:])
        out[seq, pos] = t
        return out.transpose(1, 2)

    mask = torch.arange(max_len, device=q.device)[None, :] < lengths[:, None]  # [num_seqs, max_len] keys
    out = F.scaled_dot_product_attention(padded(q), padded(k), padded(v), attn_mask=mask[:, None, None, :],
                                         scale=scale)
    return out.transpose(1, 2)[seq, pos]  # [num_tokens, num_heads, head_dim]


class Intermediate(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = _activation(cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: EncoderConfig, ops: Ops) -> None:
        super().__init__()
        self.attention = EncoderAttention(cfg, ops)
        self.intermediate = Intermediate(cfg)
        self.output = DenseNorm(cfg, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, meta: AttentionMetadata, scratch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = self.attention(x, meta, scratch)
        return self.output(self.intermediate(x), x)


class EncoderStack(nn.Module):
    def __init__(self, cfg: EncoderConfig, ops: Ops) -> None:
        super().__init__()
        self.layer = nn.ModuleList(EncoderLayer(cfg, ops) for _ in range(cfg.num_layers))


class Encoder(nn.Module):
    """input ids [num_tokens] of packed inputs → final hidden states [num_tokens, hidden]."""

    def __init__(self, cfg: EncoderConfig, ops: Ops) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = EncoderStack(cfg, ops)

    def forward(self, input_ids: torch.Tensor, meta: AttentionMetadata,
                scratch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        # Every input is one segment, so every token type is 0 (what sentence-transformers passes too).
        x = self.embeddings(input_ids, meta.positions, torch.zeros_like(input_ids))
        for layer in self.encoder.layer:
            x = layer(x, meta, scratch)
        return x


def build_encoder(cfg: EncoderConfig, ops: Ops, dtype: torch.dtype, device: torch.device) -> Encoder:
    with torch.device("meta"):
        model = Encoder(cfg, ops).to(dtype)
    return model.to_empty(device=device).eval().requires_grad_(False)


def load_encoder_weights(model: Encoder, folder: str | Path) -> None:
    """Copies every checkpoint tensor into the parameter of the same name; refuses unknown, missing or misshapen ones."""
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    for path in weight_files(folder):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for raw in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                name = next((raw[len(p):] for p in _WRAPPER_PREFIXES if raw.startswith(p)), raw)
                if name.startswith(_UNUSED_PREFIXES):
                    continue
                if name not in params:
                    raise InvalidArgument(f"{path}: tensor {raw} does not belong to a {model.cfg.architecture}")
                shape = tuple(f.get_slice(raw).get_shape())
                if shape != tuple(params[name].shape):
                    raise InvalidArgument(f"{path}: tensor {raw} has shape {shape}, expected "
                                          f"{tuple(params[name].shape)}")
                params[name].data.copy_(f.get_tensor(raw))
                loaded.add(name)
    missing = sorted(set(params) - loaded)
    if missing:
        raise InvalidArgument(f"{folder}: tensor {missing[0]} is missing from the checkpoint ({len(missing)} missing)")


def init_dummy_encoder_weights(model: Encoder, seed: int = 0, std: float = 0.02) -> None:
    """Random weights of the right shapes: LayerNorms at identity, the rest N(0, std)."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, param in model.named_parameters():
        if "LayerNorm" in name:
            param.data.fill_(1.0 if name.endswith("weight") else 0.0)
        elif name.endswith(".bias"):
            param.data.zero_()
        else:
            param.data.normal_(0.0, std, generator=gen)
