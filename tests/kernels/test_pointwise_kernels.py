"""RMSNorm, rotary embedding and SiLU-and-multiply against their references and against Hugging Face."""

from __future__ import annotations

import math

import pytest
import torch

from kernels import apply_rotary, apply_rotary_ref, rms_norm, rms_norm_ref, silu_and_mul, silu_and_mul_ref


@pytest.mark.parametrize("num_tokens, hidden", [(7, 64), (3, 200), (40, 128)])
def test_rms_norm_matches_reference_with_and_without_residual(
    relative_error, tolerance, device, dtype, num_tokens, hidden
):
    g = torch.Generator().manual_seed(hidden)
    x = torch.randn(num_tokens, hidden, generator=g).to(dtype).to(device)
    residual = torch.randn(num_tokens, hidden, generator=g).to(dtype).to(device)
    weight = (1 + 0.1 * torch.randn(hidden, generator=g)).to(dtype).to(device)

    out = rms_norm(x, weight, 1e-6)
    ref = rms_norm_ref(x.cpu(), weight.cpu(), 1e-6)
    assert out.dtype == ref.dtype == dtype
    assert relative_error(out.cpu(), ref) < tolerance

    out, summed = rms_norm(x, weight, 1e-6, residual=residual)
    ref, ref_summed = rms_norm_ref(x.cpu(), weight.cpu(), 1e-6, residual=residual.cpu())
    if device == "cpu" and dtype == torch.bfloat16:
        # The interpreter truncates fp32 -> bf16 where the GPU (and torch) round to nearest even.
        assert relative_error(summed, ref_summed) < tolerance
    else:
        assert torch.equal(summed.cpu(), ref_summed)  # x + residual rounded once, as torch rounds it
    assert relative_error(out.cpu(), ref) < tolerance


def _assert_sum_goes_into_summed_out(norm, device: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 64, generator=g).to(dtype).to(device)
    residual = torch.randn(5, 64, generator=g).to(dtype).to(device)
    weight = (1 + 0.1 * torch.randn(64, generator=g)).to(dtype).to(device)
    out, summed = norm(x, weight, 1e-6, residual=residual)
    buffer = residual.clone()
    out_in_place, summed_in_place = norm(x, weight, 1e-6, residual=buffer, summed_out=buffer)
    assert summed_in_place.data_ptr() == buffer.data_ptr()
    assert torch.equal(summed_in_place, summed) and torch.equal(out_in_place, out)
    with pytest.raises(ValueError, match="^summed_out needs a residual: without one there is no sum to write$"):
        norm(x, weight, 1e-6, summed_out=buffer)
    with pytest.raises(ValueError, match=r"^summed_out must have shape \(5, 64\), got \(4, 64\)$"):
        norm(x, weight, 1e-6, residual=residual, summed_out=buffer[:4])


def test_rms_norm_writes_the_sum_into_summed_out_even_over_its_own_residual(device, dtype) -> None:
    _assert_sum_goes_into_summed_out(rms_norm, device, dtype)


def test_rms_norm_reference_writes_the_sum_into_summed_out_even_over_its_own_residual() -> None:
    _assert_sum_goes_into_summed_out(rms_norm_ref, "cpu", torch.bfloat16)


def test_rms_norm_reference_equals_hugging_face_llama_rms_norm() -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    g = torch.Generator().manual_seed(0)
    norm = LlamaRMSNorm(96, eps=1e-5).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(96, generator=g))
    x = torch.randn(5, 96, generator=g).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(rms_norm_ref(x, norm.weight, 1e-5), norm(x))


def _llama3_cos_sin(head_dim: int, max_position: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(
        hidden_size=head_dim * 4, num_attention_heads=4, max_position_embeddings=max_position,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    )
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    freqs = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq.float())  # [max_pos, d/2]
    return freqs.cos(), freqs.sin(), inv_freq


@pytest.mark.parametrize("head_dim, num_heads, num_kv_heads", [(64, 4, 1), (128, 8, 2)])
def test_rotary_matches_reference_with_llama3_scaled_tables(
    relative_error, tolerance, device, dtype, head_dim, num_heads, num_kv_heads
):
    g = torch.Generator().manual_seed(head_dim)
    cos, sin, _ = _llama3_cos_sin(head_dim, 300)
    positions = torch.randint(0, 300, (11,), generator=g)
    q = torch.randn(11, num_heads, head_dim, generator=g).to(dtype)
    k = torch.randn(11, num_kv_heads, head_dim, generator=g).to(dtype)
    q_out, k_out = apply_rotary(q.to(device), k.to(device), positions.to(device), cos.to(device), sin.to(device))
    q_ref, k_ref = apply_rotary_ref(q, k, positions, cos, sin)
    assert relative_error(q_out.cpu(), q_ref) < tolerance
    assert relative_error(k_out.cpu(), k_ref) < tolerance


def test_rotary_reference_equals_hugging_face_apply_rotary_pos_emb() -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    head_dim = 64
    cos, sin, _ = _llama3_cos_sin(head_dim, 300)
    g = torch.Generator().manual_seed(2)
    positions = torch.tensor([0, 5, 63, 64, 299])
    q = torch.randn(5, 4, head_dim, generator=g)
    k = torch.randn(5, 2, head_dim, generator=g)
    # Hugging Face takes [batch, heads, seq, d] and full-width cos/sin (the half repeated).
    full_cos = torch.cat((cos, cos), dim=-1)[positions][None]
    full_sin = torch.cat((sin, sin), dim=-1)[positions][None]
    hf_q, hf_k = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], full_cos, full_sin)
    q_ref, k_ref = apply_rotary_ref(q, k, positions, cos, sin)
    torch.testing.assert_close(q_ref, hf_q[0].transpose(0, 1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k_ref, hf_k[0].transpose(0, 1), rtol=1e-6, atol=1e-6)


def test_rotary_at_position_zero_is_the_identity(device, dtype) -> None:
    cos, sin = torch.ones(4, 32), torch.zeros(4, 32)
    q = torch.randn(3, 2, 64).to(dtype)
    k = torch.randn(3, 1, 64).to(dtype)
    q_out, k_out = apply_rotary(q.to(device), k.to(device), torch.zeros(3, dtype=torch.int64, device=device),
                                cos.to(device), sin.to(device))
    assert torch.equal(q_out.cpu(), q)
    assert torch.equal(k_out.cpu(), k)


@pytest.mark.parametrize("num_tokens, d", [(5, 64), (3, 5000)])
def test_silu_and_mul_matches_reference(relative_error, tolerance, device, dtype, num_tokens, d):
    g = torch.Generator().manual_seed(d)
    x = torch.randn(num_tokens, 2 * d, generator=g).to(dtype)
    out = silu_and_mul(x.to(device))
    ref = silu_and_mul_ref(x)
    assert out.shape == (num_tokens, d)
    assert relative_error(out.cpu(), ref) < tolerance

def test_silu_and_mul_reference_multiplies_silu_of_the_gate_half_by_the_up_half() -> None:
    # gate = [0, 2], up = [3, 5]: silu(0) * 3 = 0, silu(2) * 5 = 2 * 5 / (1 + e**-2).
    out = silu_and_mul_ref(torch.tensor([[0.0, 2.0, 3.0, 5.0]]))
    assert out[0, 0].item() == 0.0
    assert out[0, 1].item() == pytest.approx(10.0 / (1.0 + math.exp(-2.0)), rel=1e-6)


def test_pointwise_launchers_reject_bad_shapes() -> None:
    with pytest.raises(ValueError, match="even last dimension"):
        silu_and_mul(torch.randn(2, 5))
    with pytest.raises(ValueError, match="weight has 3 elements"):
        rms_norm(torch.randn(2, 4), torch.ones(3), 1e-6)
    with pytest.raises(ValueError, match=r"^residual must have shape \(2, 4\), got \(3, 4\)$"):
        rms_norm(torch.randn(2, 4), torch.ones(4), 1e-6, residual=torch.randn(3, 4))
    with pytest.raises(ValueError, match="cos and sin must both be"):
        apply_rotary(torch.randn(2, 2, 8), torch.randn(2, 1, 8), torch.zeros(2, dtype=torch.int64),
                     torch.ones(4, 8), torch.ones(4, 8))
    with pytest.raises(TypeError, match="cos must have dtype"):
        apply_rotary(torch.randn(2, 2, 8), torch.randn(2, 1, 8), torch.zeros(2, dtype=torch.int64),
                     torch.ones(4, 4).double(), torch.ones(4, 4))
