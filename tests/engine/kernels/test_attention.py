"""Paged attention and store_kv: Triton (interpreted) vs reference vs a dense SDPA oracle."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.kernels import reference as ref
from tests.engine.kernels.helpers import random_paged_cache, tol

HEAD_DIM = 16
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def dense_oracle(q, k_cache, v_cache, table, ctx, q_len, scale):
    """SDPA over the sequence's K/V gathered into a dense tensor; queries are the last q_len."""
    bs = k_cache.shape[1]
    nblk = -(-ctx // bs)
    k = k_cache[table[:nblk].long()].reshape(-1, *k_cache.shape[2:])[:ctx].float()
    v = v_cache[table[:nblk].long()].reshape(-1, *v_cache.shape[2:])[:ctx].float()
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, 1).transpose(0, 1)
    v = v.repeat_interleave(group, 1).transpose(0, 1)
    q_pos = torch.arange(ctx - q_len, ctx)
    mask = torch.arange(ctx)[None, :] <= q_pos[:, None]
    out = F.scaled_dot_product_attention(q.float().transpose(0, 1), k, v, attn_mask=mask, scale=scale)
    return out.transpose(0, 1)


@pytest.mark.parametrize("partition", [None, 16])  # None: one program per (seq, kv head)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_decode_matches_reference_and_oracle(tops, monkeypatch, block_size, group, dtype, partition):
    from engine.kernels import triton_ops  # the module itself: `tops` may be a device proxy

    if partition is None:
        monkeypatch.setattr(triton_ops, "SPLIT_BELOW_PROGRAMS", 0)
    else:  # split-KV: several partitions per sequence, some past a sequence's end
        monkeypatch.setattr(triton_ops, "DECODE_PARTITION", partition)
    hkv = 2
    seq_lens = [1, 5, 17, 70, 0]  # ragged, crosses block and key-tile edges, one empty (padding) row
    k_cache, v_cache, tables, lens = random_paged_cache(seq_lens, block_size, hkv, HEAD_DIM, dtype)
    q = torch.randn(len(seq_lens), hkv * group, HEAD_DIM).to(dtype)
    scale = HEAD_DIM**-0.5
    want = ref.paged_attention_decode(q, k_cache, v_cache, tables, lens, scale)
    got = tops.paged_attention_decode(q, k_cache, v_cache, tables, lens, scale)
    assert got.dtype == dtype and got.shape == q.shape
    torch.testing.assert_close(got.float(), want.float(), **tol(dtype))
    assert torch.all(got[-1] == 0) and torch.all(want[-1] == 0)
    for i, n in enumerate(seq_lens[:-1]):
        oracle = dense_oracle(q[i : i + 1], k_cache, v_cache, tables[i], n, 1, scale)[0]
        torch.testing.assert_close(want[i].float(), oracle, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("block_size", [2, 8, 16])
def test_chunked_prefill_matches_reference_and_oracle(tops, block_size, group, dtype):
    hkv = 2
    # (chunk length, total context incl. chunk): fresh prompt, chunk after a cached prefix,
    # a decode-like single token, an empty chunk, and a chunk long enough for two row tiles.
    shapes = [(7, 7), (5, 23), (1, 9), (0, 4), (40, 45)]
    chunk = [c for c, _ in shapes]
    ctx = [n for _, n in shapes]
    k_cache, v_cache, tables, lens = random_paged_cache(ctx, block_size, hkv, HEAD_DIM, dtype)
    cu = torch.tensor([0, *torch.tensor(chunk).cumsum(0).tolist()], dtype=torch.int32)
    q = torch.randn(int(cu[-1]), hkv * group, HEAD_DIM).to(dtype)
    scale = 0.3
    want = ref.paged_attention_prefill(q, k_cache, v_cache, tables, lens, cu, max(chunk), scale)
    got = tops.paged_attention_prefill(q, k_cache, v_cache, tables, lens, cu, max(chunk), scale)
    torch.testing.assert_close(got.float(), want.float(), **tol(dtype))
    for i, (n, c) in enumerate(shapes):
        if n == 0:
            continue
        oracle = dense_oracle(q[cu[i] : cu[i + 1]], k_cache, v_cache, tables[i], c, n, scale)
        torch.testing.assert_close(want[cu[i] : cu[i + 1]].float(), oracle, **tol(dtype))


def test_prefill_with_one_token_chunks_equals_decode(tops):
    k_cache, v_cache, tables, lens = random_paged_cache([3, 12, 30], 4, 1, HEAD_DIM, torch.float32)
    q = torch.randn(3, 3, HEAD_DIM)
    cu = torch.arange(4, dtype=torch.int32)
    dec = tops.paged_attention_decode(q, k_cache, v_cache, tables, lens, 0.25)
    pre = tops.paged_attention_prefill(q, k_cache, v_cache, tables, lens, cu, 1, 0.25)
    torch.testing.assert_close(pre, dec)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_store_kv_matches_reference(tops, block_size, dtype):
    hkv, num_blocks = 3, 6
    total = num_blocks * block_size
    k_cache = torch.randn(num_blocks, block_size, hkv, HEAD_DIM).to(dtype)
    v_cache = torch.randn_like(k_cache)
    t = min(5, total)
    slots = torch.randperm(total)[:t].long()
    slots[t // 2] = -1  # a padding token writes nothing
    k = torch.randn(t, hkv, HEAD_DIM).to(dtype)
    v = torch.randn(t, hkv, HEAD_DIM).to(dtype)
    kr, vr = k_cache.clone(), v_cache.clone()
    ref.store_kv(k, v, kr, vr, slots)
    tops.store_kv(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, kr) and torch.equal(v_cache, vr)
    flat = kr.view(-1, hkv, HEAD_DIM)
    for i, s in enumerate(slots.tolist()):
        if s >= 0:
            assert torch.equal(flat[s], k[i])


def test_store_then_decode_round_trip(tops):
    """A step as the engine runs it: store the new token's K/V, then attend including it."""
    k_cache, v_cache, tables, lens = random_paged_cache([6, 9], 4, 2, HEAD_DIM, torch.float32)
    slots = torch.tensor([int(tables[i, (n - 1) // 4]) * 4 + (n - 1) % 4 for i, n in enumerate([6, 9])])
    k_new, v_new = torch.randn(2, 2, HEAD_DIM), torch.randn(2, 2, HEAD_DIM)
    tops.store_kv(k_new, v_new, k_cache, v_cache, slots)
    q = torch.randn(2, 4, HEAD_DIM)
    got = tops.paged_attention_decode(q, k_cache, v_cache, tables, lens, 0.25)
    for i, n in enumerate([6, 9]):
        torch.testing.assert_close(
            got[i], dense_oracle(q[i : i + 1], k_cache, v_cache, tables[i], n, 1, 0.25)[0]
        )


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_bad_shapes_raise_and_change_nothing(tops, impl):
    ops = ref if impl == "reference" else tops
    k_cache, v_cache, tables, lens = random_paged_cache([4], 4, 2, HEAD_DIM, torch.float32)
    before = k_cache.clone()
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        ops.paged_attention_decode(torch.randn(1, 3, HEAD_DIM), k_cache, v_cache, tables, lens, 1.0)
    with pytest.raises(ValueError, match="head_dim"):
        ops.paged_attention_decode(torch.randn(1, 2, HEAD_DIM + 2), k_cache, v_cache, tables, lens, 1.0)
    with pytest.raises(ValueError, match="k and v must be"):
        ops.store_kv(
            torch.randn(2, 3, HEAD_DIM), torch.randn(2, 3, HEAD_DIM), k_cache, v_cache, torch.tensor([0, 1])
        )
    with pytest.raises(ValueError, match="slot_mapping"):
        ops.store_kv(
            torch.randn(2, 2, HEAD_DIM), torch.randn(2, 2, HEAD_DIM), k_cache, v_cache, torch.tensor([0])
        )
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        ops.paged_attention_prefill(
            torch.randn(2, 2, HEAD_DIM), k_cache, v_cache, tables, lens, torch.tensor([0, 2, 2]), 2, 1.0
        )
    assert torch.equal(k_cache, before)


@pytest.mark.parametrize("head_dim", [24, 64])  # 24: not a power of two (padded, masked tiles)
def test_attention_head_dims(tops, head_dim):
    k_cache, v_cache, tables, lens = random_paged_cache([5, 33], 8, 1, head_dim, torch.float32)
    q = torch.randn(2, 3, head_dim)
    scale = head_dim**-0.5
    torch.testing.assert_close(
        tops.paged_attention_decode(q, k_cache, v_cache, tables, lens, scale),
        ref.paged_attention_decode(q, k_cache, v_cache, tables, lens, scale),
        **tol(torch.float32),
    )
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    qp = torch.randn(7, 3, head_dim)
    torch.testing.assert_close(
        tops.paged_attention_prefill(qp, k_cache, v_cache, tables, lens, cu, 4, scale),
        ref.paged_attention_prefill(qp, k_cache, v_cache, tables, lens, cu, 4, scale),
        **tol(torch.float32),
    )
