"""The verifiable sampler (engine.sampling): counter-based uniforms, the adjusted
distribution, inverse CDF in token-id order, independence from batch neighbours."""

from __future__ import annotations

import hashlib

import pytest
import torch

from engine.sampling import MAX_SEED, adjusted_probs, default_seed, draw, sample_row, sample_tokens, uniform
from engine.types import SamplingParams


def test_uniform_is_sha256_of_seed_and_index():
    d = hashlib.sha256((5).to_bytes(8, "big") + (3).to_bytes(8, "big")).digest()
    assert uniform(5, 3) == (int.from_bytes(d[:8], "big") >> 11) / 2**53
    us = [uniform(s, t) for s in (0, 1, MAX_SEED) for t in range(200)]
    assert all(0.0 <= u < 1.0 for u in us)
    assert len(set(us)) == len(us)
    assert 0.4 < sum(us) / len(us) < 0.6


def test_default_seed_is_deterministic_and_in_range():
    a, b = default_seed("req-1"), default_seed("req-2")
    assert a == default_seed("req-1") and a != b
    assert 0 <= a <= MAX_SEED and 0 <= b <= MAX_SEED


def test_seed_range_is_validated():
    SamplingParams(seed=MAX_SEED).validate()
    for bad in (-1, MAX_SEED + 1, 1.5, True):
        with pytest.raises(ValueError, match="seed"):
            SamplingParams(seed=bad).validate()


def test_adjusted_distribution_top_k_then_top_p():
    logits = torch.tensor([[2.0, 1.0, 0.0, 3.0, -1.0]])
    p = adjusted_probs(logits, 1.0)
    assert torch.allclose(p, torch.softmax(logits.double(), -1))
    k2 = adjusted_probs(logits, 1.0, top_k=2)[0]
    assert (k2 > 0).tolist() == [True, False, False, True, False]
    assert torch.isclose(k2.sum(), torch.tensor(1.0, dtype=torch.float64))
    # top-p keeps tokens while the mass before them is < p: probs ~ [.24, .09, .03, .64, .01]
    p7 = adjusted_probs(logits, 1.0, top_p=0.7)[0]
    assert (p7 > 0).tolist() == [True, False, False, True, False]
    p5 = adjusted_probs(logits, 1.0, top_p=0.5)[0]
    assert (p5 > 0).tolist() == [False, False, False, True, False]
    # Ties at the top-k cut-off go to the lower token id.
    tie = adjusted_probs(torch.tensor([[1.0, 5.0, 1.0, 1.0]]), 1.0, top_k=2)[0]
    assert (tie > 0).tolist() == [True, True, False, False]
    with pytest.raises(ValueError):
        adjusted_probs(logits, 0.0)


def test_draw_is_inverse_cdf_in_id_order():
    probs = torch.tensor([[0.25, 0.0, 0.5, 0.25]], dtype=torch.float64)
    for u, want in ((0.0, 0), (0.2499, 0), (0.25, 2), (0.7499, 2), (0.75, 3), (0.999999, 3)):
        assert int(draw(probs, torch.tensor([u], dtype=torch.float64))[0]) == want
    # Unnormalised rows (top-p leaves mass < 1) scale u by the total; a zero-probability
    # last token is never picked even when u * total rounds up to the total.
    probs = torch.tensor([[0.3, 0.3, 0.0]], dtype=torch.float64)
    assert int(draw(probs, torch.tensor([1.0 - 2**-53], dtype=torch.float64))[0]) == 1


def test_greedy_is_argmax_with_lowest_id_on_ties():
    logits = torch.tensor([0.5, 2.0, 2.0, 1.0])
    assert sample_row(logits, SamplingParams(), 1, 0) == 1
    assert sample_tokens(logits[None, :], [SamplingParams()], [1], [0]) == [1]


def test_draws_depend_only_on_logits_seed_and_index():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 1000, generator=g) * 3
    params = [
        SamplingParams(temperature=t, top_p=tp, top_k=k)
        for t, tp, k in [
            (0.7, 1.0, 0),
            (1.0, 0.9, 0),
            (1.0, 1.0, 50),
            (0.0, 1.0, 0),
            (1.3, 0.8, 20),
            (0.5, 1.0, 0),
        ]
    ]
    seeds = [11, 12, 13, 14, 15, 16]
    steps = [0, 5, 9, 2, 7, 1]
    batch = sample_tokens(logits, params, seeds, steps)
    alone = [sample_tokens(logits[i : i + 1], [params[i]], [seeds[i]], [steps[i]])[0] for i in range(6)]
    shuffled = sample_tokens(logits.flip(0), params[::-1], seeds[::-1], steps[::-1])[::-1]
    assert batch == alone == shuffled
    assert batch[3] == int(logits[3].argmax())
    # Another seed or another index changes the draw somewhere over many rows.
    many = torch.randn(64, 1000, generator=g)
    p = [SamplingParams(temperature=1.0)] * 64
    a = sample_tokens(many, p, [1] * 64, list(range(64)))
    assert a != sample_tokens(many, p, [2] * 64, list(range(64)))
    assert a != sample_tokens(many, p, [1] * 64, list(range(1, 65)))


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([0.1, 0.6, 0.3]))
    counts = [0, 0, 0]
    for t in range(3000):
        counts[sample_row(logits, SamplingParams(temperature=1.0), 99, t)] += 1
    assert abs(counts[1] / 3000 - 0.6) < 0.04 and abs(counts[2] / 3000 - 0.3) < 0.04
