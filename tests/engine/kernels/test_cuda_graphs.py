"""Decode graph runner on CPU: eager pass-through, and the padded static path a replay sees."""

from __future__ import annotations

import pytest
import torch

from engine.kernels import reference as ref
from engine.kernels.cuda_graphs import DecodeGraphRunner, default_buckets
from tests.engine.kernels.helpers import random_paged_cache

HKV, HQ, D, VOCAB = 2, 4, 8, 11


class TinyDecode:
    """One attention layer over a paged cache, written as a graph-safe decode forward."""

    def __init__(self, k_cache: torch.Tensor, v_cache: torch.Tensor, ops=ref):
        self.k_cache, self.v_cache, self.ops = k_cache, v_cache, ops
        self.embed = torch.randn(VOCAB, (HQ + 2 * HKV) * D, device=k_cache.device)
        self.calls = 0

    def __call__(self, input_ids, positions, slot_mapping, block_tables, seq_lens):
        self.calls += 1
        x = (self.embed[input_ids] + positions[:, None] * 0.01).to(self.embed.dtype)
        q, k, v = x.split([HQ * D, HKV * D, HKV * D], dim=-1)
        b = input_ids.shape[0]
        self.ops.store_kv(
            k.reshape(b, HKV, D), v.reshape(b, HKV, D), self.k_cache, self.v_cache, slot_mapping
        )
        out = self.ops.paged_attention_decode(
            q.reshape(b, HQ, D), self.k_cache, self.v_cache, block_tables, seq_lens, 0.3
        )
        return out.reshape(b, HQ * D)


def _step_inputs(tables: torch.Tensor, lens: torch.Tensor, block_size: int):
    b = lens.shape[0]
    pos = (lens - 1).long()
    slots = torch.stack(
        [tables[i, pos[i] // block_size].long() * block_size + pos[i] % block_size for i in range(b)]
    )
    return torch.randint(0, VOCAB, (b,)), pos, slots, tables, lens


def test_default_buckets():
    assert default_buckets(1) == [1]
    assert default_buckets(5) == [1, 2, 4, 5]
    assert default_buckets(40) == [1, 2, 4, 8, 16, 32, 40]


def test_static_padded_path_matches_eager_and_padding_writes_nothing():
    block_size = 4
    k_cache, v_cache, tables, lens = random_paged_cache([3, 9, 6], block_size, HKV, D, torch.float32)
    args = _step_inputs(tables, lens, block_size)
    eager_model = TinyDecode(k_cache.clone(), v_cache.clone())
    static_model = TinyDecode(k_cache.clone(), v_cache.clone())
    static_model.embed = eager_model.embed
    want = DecodeGraphRunner(eager_model, max_batch_size=8, max_blocks_per_seq=6, device="cpu")(*args)
    runner = DecodeGraphRunner(
        static_model, max_batch_size=8, max_blocks_per_seq=6, device="cpu", mode="static"
    )
    assert runner.bucket_for(3) == 4
    got = runner(*args)  # 3 real rows padded to bucket 4
    assert got.shape == want.shape
    torch.testing.assert_close(got, want)
    # The padded row stored nothing: caches are identical to the eager run's.
    assert torch.equal(static_model.k_cache, eager_model.k_cache)
    assert torch.equal(static_model.v_cache, eager_model.v_cache)
    # A smaller batch after a bigger one must not see the previous step's rows.
    got1 = runner(*(a[:1] for a in args))
    want1 = eager_model(*(a[:1] for a in args))
    torch.testing.assert_close(got1, want1)


def test_batches_beyond_the_largest_bucket_run_eagerly():
    block_size = 4
    k_cache, v_cache, tables, lens = random_paged_cache([2, 3, 4], block_size, HKV, D, torch.float32)
    model = TinyDecode(k_cache, v_cache)
    runner = DecodeGraphRunner(model, max_batch_size=2, max_blocks_per_seq=4, device="cpu", mode="static")
    assert runner.bucket_for(3) is None
    out = runner(*_step_inputs(tables, lens, block_size))
    assert out.shape == (3, HQ * D)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="CUDA"):
        DecodeGraphRunner(lambda *a: a[0], max_batch_size=2, max_blocks_per_seq=2, device="cpu", mode="graph")
    with pytest.raises(ValueError, match="buckets"):
        DecodeGraphRunner(lambda *a: a[0], max_batch_size=2, max_blocks_per_seq=2, device="cpu", buckets=[4])
    runner = DecodeGraphRunner(
        lambda *a: a[0], max_batch_size=4, max_blocks_per_seq=2, device="cpu", mode="static"
    )
    ids = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="columns"):
        runner(ids, ids, ids, torch.zeros(2, 3, dtype=torch.int32), ids.int())
    with pytest.raises(ValueError, match="seq_lens"):
        runner(ids, ids, ids, torch.zeros(2, 2, dtype=torch.int32), ids[:1].int())
    runner.capture()  # no-op off CUDA
    assert not runner.captured


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graph_replay_matches_eager_on_cuda():
    import engine.kernels as kernels

    ops = kernels.get_ops("cuda")
    block_size = 4
    k_cache, v_cache, tables, lens = random_paged_cache([3, 9, 6], block_size, HKV, D, torch.float16)
    args = [a.cuda() for a in _step_inputs(tables, lens, block_size)]
    eager = TinyDecode(k_cache.cuda(), v_cache.cuda(), ops)
    graphed = TinyDecode(k_cache.cuda(), v_cache.cuda(), ops)
    graphed.embed = eager.embed = eager.embed.half()
    runner = DecodeGraphRunner(graphed, max_batch_size=8, max_blocks_per_seq=6, device="cuda")
    runner.capture()
    assert runner.captured and runner.mode == "graph"
    calls = graphed.calls
    got = runner(*args).clone()  # 3 rows replayed in the bucket-4 graph
    assert graphed.calls == calls, "a replay must not call the Python forward"
    want = eager(*args)
    torch.testing.assert_close(got, want)
    assert torch.equal(graphed.k_cache, eager.k_cache)  # the padded row wrote nothing
