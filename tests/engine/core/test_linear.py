"""engine.linear: the oneDNN packed-weight projection must compute what F.linear does."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.linear import make_linear, onednn_enabled

pytestmark = pytest.mark.skipif(
    not onednn_enabled(torch.device("cpu"), torch.float32), reason="torch built without oneDNN"
)


@pytest.mark.parametrize("rows", [0, 1, 3, 32, 257])
@pytest.mark.parametrize("with_bias", [False, True])
def test_packed_matches_f_linear(rows, with_bias):
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(96, 80, generator=g)
    b = torch.randn(96, generator=g) if with_bias else None
    lin = make_linear(w, b)
    assert lin.packed
    x = torch.randn(rows, 80, generator=g)
    torch.testing.assert_close(lin(x), F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_non_contiguous_input_and_bf16():
    w = torch.randn(64, 48)
    x = torch.randn(5, 100)[:, 7:55]  # a strided view, like a slice of a fused projection
    assert not x.is_contiguous()
    torch.testing.assert_close(make_linear(w)(x), F.linear(x, w), rtol=1e-5, atol=1e-5)
    wb, xb = w.bfloat16(), x.bfloat16()
    lin = make_linear(wb)
    assert lin.packed
    torch.testing.assert_close(lin(xb).float(), F.linear(xb, wb).float(), rtol=2e-2, atol=2e-2)


def test_env_switch_selects_plain_f_linear(monkeypatch):
    monkeypatch.setenv("RAKIS_CPU_GEMM", "mkl")
    w = torch.randn(8, 4)
    lin = make_linear(w)
    assert not lin.packed
    x = torch.randn(2, 4)
    assert torch.equal(lin(x), F.linear(x, w))
    # fp16 and other dtypes oneDNN is not asked to pack stay on F.linear too
    monkeypatch.delenv("RAKIS_CPU_GEMM")
    assert not make_linear(w.half()).packed
