"""Sampling semantics (torch on every device) and op-set selection."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels import reference as ref


def test_greedy_and_top_k_one_are_argmax():
    logits = torch.randn(4, 50)
    want = logits.argmax(-1)
    assert torch.equal(ref.sample(logits, 0.0, 1.0, 0), want)
    assert torch.equal(ref.sample(logits, [1.0, 0.7, 2.0, 1.0], 1.0, 1), want)
    assert torch.equal(ref.sample(logits, 1.0, 1e-6, 0), want)  # tiny top_p keeps only the best


def test_mixed_rows_keep_their_own_parameters():
    logits = torch.randn(3, 40)
    out = ref.sample(logits, [0.0, 1.0, 1.0], [1.0, 1.0, 0.5], [0, 3, 0])
    assert out[0] == logits[0].argmax()
    assert out[1] in logits[1].topk(3).indices
    assert out.dtype == torch.int64 and out.shape == (3,)


def test_seeded_rows_are_reproducible_whatever_the_batch():
    logits = torch.randn(3, 100)

    def draw(rows):
        gens = [torch.Generator().manual_seed(7) if i == 1 else None for i in rows]
        return ref.sample(logits[rows], 1.0, 0.95, 50, gens)

    a = draw([0, 1, 2])[1]
    b = draw([2, 1])[1]
    c = draw([1])[0]
    assert a == b == c


def test_samples_follow_the_filtered_distribution():
    n = 4000
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0]).expand(n, 5).contiguous()
    gens = [torch.Generator().manual_seed(1)] + [None] * (n - 1)
    torch.manual_seed(3)
    out = ref.sample(logits, 1.0, 1.0, 3, gens)
    assert set(out.tolist()) <= {0, 1, 2}
    probs = logits[0, :3].softmax(-1)
    freq = torch.bincount(out, minlength=3)[:3].float() / n
    assert torch.allclose(freq, probs, atol=0.04)
    # top_p = 0.7 over probs [0.63, 0.23, ...]: keeps the first two tokens
    out = ref.sample(logits, 1.0, 0.7, 0)
    assert set(out.tolist()) == {0, 1}


def test_sample_rejects_bad_parameters():
    logits = torch.randn(2, 10)
    with pytest.raises(ValueError, match="top_p"):
        ref.sample(logits, 1.0, 0.0, 0)
    with pytest.raises(ValueError, match="temperature"):
        ref.sample(logits, [1.0, 1.0, 1.0], 1.0, 0)
    with pytest.raises(ValueError, match="generators"):
        ref.sample(logits, 1.0, 1.0, 0, [None])
    with pytest.raises(ValueError, match="logits"):
        ref.sample(torch.randn(10), 1.0, 1.0, 0)


def test_get_ops_picks_backend(tops, monkeypatch):
    assert kernels.get_ops("cpu").backend == "reference"
    assert kernels.get_ops(torch.device("cpu")).paged_attention_decode is ref.paged_attention_decode
    cuda = kernels.get_ops("cuda")
    assert cuda.backend == "triton" and cuda.rms_norm is tops.rms_norm
    monkeypatch.setenv("RAKIS_KERNELS", "reference")
    assert kernels.get_ops("cuda").backend == "reference"
