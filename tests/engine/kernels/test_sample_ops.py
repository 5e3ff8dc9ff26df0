"""Sampling semantics (torch on every device) and op-set selection."""

from __future__ import annotations

import pytest
import torch

import engine.kernels as kernels
from engine.kernels import reference as ref


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
    from engine.kernels import triton_ops

    assert cuda.backend == "triton" and cuda.rms_norm is triton_ops.rms_norm
    monkeypatch.setenv("RAKIS_KERNELS", "reference")
    assert kernels.get_ops("cuda").backend == "reference"


def _brute_force_keep(logits, temperature, top_p, top_k):
    """Token sets kept by top-k then top-p, by sorting the whole vocabulary per row."""
    keep = []
    for row, t, p, k in zip(logits, temperature, top_p, top_k, strict=True):
        x = row / t
        vals, ids = x.sort(descending=True)
        if 0 < k < x.numel():
            vals, ids = vals[:k], ids[:k]
        probs = vals.softmax(-1)
        before = probs.cumsum(-1) - probs
        keep.append(set(ids[(before < p) | (torch.arange(len(ids)) == 0)].tolist()))
    return keep


@pytest.mark.parametrize("scale", [0.5, 3.0, 12.0])  # flat to peaked: nucleus from huge to tiny
def test_filter_keeps_exactly_the_brute_force_set(scale):
    vocab = 3000  # > the 1024 partial-sort candidates, so both paths are exercised
    logits = torch.randn(5, vocab) * scale
    temperature = torch.tensor([1.0, 0.7, 1.3, 1.0, 0.9])
    top_p = torch.tensor([0.9, 1.0, 0.5, 0.99, 0.3])
    top_k = torch.tensor([0, 20, 0, 1500, 0])
    x = logits / temperature[:, None]
    kk = torch.where(top_k <= 0, torch.full_like(top_k, vocab), top_k)
    greedy = torch.zeros(5, dtype=torch.bool)
    n = ref._candidate_count(kk, top_p, greedy, vocab)
    assert n == 1500  # partial ranking first: the fallback must be what catches flat rows
    kept_x, order = ref._top_k_top_p(x, kk, top_p, greedy, n)
    got = [set(order[i][kept_x[i] > float("-inf")].tolist()) for i in range(5)]
    assert got == _brute_force_keep(logits, temperature, top_p, top_k)
