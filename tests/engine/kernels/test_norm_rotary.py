"""RMSNorm and rotary: Triton (interpreted) vs reference vs the Hugging Face Llama modules."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

from engine.kernels import reference as ref
from tests.engine.kernels.helpers import tol

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [16, 96])  # 96: not a power of two
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_reference_and_hf(tops, dtype, hidden, with_residual):
    x = torch.randn(2, 3, hidden).to(dtype)
    residual = torch.randn(2, 3, hidden).to(dtype) if with_residual else None
    weight = (1 + 0.1 * torch.randn(hidden)).to(dtype)
    x0 = x.clone()
    r0 = residual.clone() if residual is not None else None
    out_r, res_r = ref.rms_norm(x, weight, 1e-5, residual)
    out_t, res_t = tops.rms_norm(x, weight, 1e-5, residual)
    assert out_t.dtype == dtype and out_t.shape == x.shape
    torch.testing.assert_close(out_t, out_r, **tol(dtype))
    torch.testing.assert_close(res_t, res_r, **tol(dtype))
    hf = LlamaRMSNorm(hidden, eps=1e-5).to(dtype)
    with torch.no_grad():
        hf.weight.copy_(weight)
        s = x + residual if residual is not None else x
        torch.testing.assert_close(out_r, hf(s), **tol(dtype))
    torch.testing.assert_close(res_r, s)
    assert torch.equal(x, x0), "inputs must not be modified"
    if residual is not None:
        assert torch.equal(residual, r0)


def _rope(head_dim: int, max_pos: int = 64):
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    return inv_freq, *ref.rotary_cos_sin(inv_freq, max_pos)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [1, 2, 4])
def test_rotary_matches_reference_and_hf(tops, dtype, group):
    head_dim, hkv, t = 16, 2, 5
    inv_freq, cos, sin = _rope(head_dim)
    positions = torch.tensor([0, 3, 4, 17, 63])
    q = torch.randn(t, hkv * group, head_dim).to(dtype)
    k = torch.randn(t, hkv, head_dim).to(dtype)
    qr, kr, qt, kt = q.clone(), k.clone(), q.clone(), k.clone()
    ref.apply_rotary(qr, kr, positions, cos, sin)
    tops.apply_rotary(qt, kt, positions, cos, sin)
    torch.testing.assert_close(qt, qr, **tol(dtype))
    torch.testing.assert_close(kt, kr, **tol(dtype))
    # HF: cos/sin are the half-width angles repeated across both halves, [T, D].
    emb = torch.outer(positions.float(), inv_freq)
    emb = torch.cat((emb, emb), dim=-1)
    hq, hk = apply_rotary_pos_emb(
        q.float().transpose(0, 1), k.float().transpose(0, 1), emb.cos(), emb.sin(), unsqueeze_dim=0
    )
    torch.testing.assert_close(qr.float(), hq.transpose(0, 1), **tol(dtype))
    torch.testing.assert_close(kr.float(), hk.transpose(0, 1), **tol(dtype))


def test_rotary_in_place_on_fused_qkv_views(tops):
    """The engine may split one fused qkv projection; rotating the views must update it."""
    head_dim, hq, hkv, t = 16, 4, 2, 3
    _, cos, sin = _rope(head_dim)
    qkv = torch.randn(t, (hq + 2 * hkv) * head_dim)
    want = qkv.clone()
    positions = torch.tensor([1, 2, 9])
    for buf, ops in ((want, ref), (qkv, tops)):
        q = buf[:, : hq * head_dim].view(t, hq, head_dim)
        k = buf[:, hq * head_dim : (hq + hkv) * head_dim].view(t, hkv, head_dim)
        ops.apply_rotary(q, k, positions, cos, sin)
    torch.testing.assert_close(qkv, want)


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_bad_input_raises_and_changes_nothing(tops, impl):
    ops = ref if impl == "reference" else tops
    _, cos, sin = _rope(16)
    q, k = torch.randn(2, 2, 16), torch.randn(2, 1, 16)
    q0 = q.clone()
    with pytest.raises(ValueError, match="cos_cache"):
        ops.apply_rotary(q, k, torch.tensor([0, 1]), torch.cat((cos, cos), -1), torch.cat((sin, sin), -1))
    with pytest.raises(ValueError, match="positions"):
        ops.apply_rotary(q, k, torch.tensor([0]), cos, sin)
    assert torch.equal(q, q0)
    with pytest.raises(ValueError, match="weight"):
        ops.rms_norm(torch.randn(2, 8), torch.ones(4), 1e-6)
    with pytest.raises(ValueError, match="residual"):
        ops.rms_norm(torch.randn(2, 8), torch.ones(8), 1e-6, torch.randn(3, 8))
