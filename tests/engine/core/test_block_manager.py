"""Property and stress tests of the block allocator, the radix prefix cache and the
scheduler's block accounting (no model: steps are simulated)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.kv_cache import BlockAllocator, OutOfBlocks
from engine.radix import RadixCache
from engine.scheduler import Scheduler, Sequence
from engine.types import GenerationRequest, RequestStream, SamplingParams

pytestmark = pytest.mark.timeout(120)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["alloc", "incref", "decref"]), st.integers(0, 7)), max_size=80))
def test_allocator_matches_model(ops):
    a = BlockAllocator(8)
    held: Counter[int] = Counter()
    for op, arg in ops:
        if op == "alloc":
            n = arg % 4
            if n > a.num_free:
                with pytest.raises(OutOfBlocks):
                    a.allocate(n)
            else:
                for b in a.allocate(n):
                    assert held[b] == 0
                    held[b] = 1
        elif op == "incref":
            live = sorted(b for b, c in held.items() if c > 0)
            if live:
                b = live[arg % len(live)]
                a.incref(b)
                held[b] += 1
        else:
            live = sorted(b for b, c in held.items() if c > 0)
            if live:
                b = live[arg % len(live)]
                a.decref(b)
                held[b] -= 1
        a.check_consistency()
        assert a.num_used == sum(1 for c in held.values() if c > 0)
    free_blocks = [b for b in range(8) if held[b] == 0]
    for b in free_blocks:
        with pytest.raises(RuntimeError):
            a.decref(b)


def test_radix_match_insert_evict():
    a = BlockAllocator(16)
    r = RadixCache(a, block_size=2)
    toks = [1, 2, 3, 4, 5, 6, 7]
    blocks = a.allocate(4)
    r.insert(toks, blocks)  # 3 full blocks go in; the partial 4th stays private
    assert r.num_blocks == 3
    assert [a.refcount(b) for b in blocks] == [2, 2, 2, 1]
    got = r.match([1, 2, 3, 4, 9, 9])
    assert got == blocks[:2] and r.peek([1, 2, 3, 4, 9, 9]) == 4
    assert r.match([1, 2, 3, 4, 5, 6], max_tokens=5) == blocks[:2]
    for b in blocks:
        a.decref(b)
    for b in got + blocks[:2]:
        a.decref(b)
    # Now only the tree holds the 3 cached blocks; LRU evicts leaves first.
    assert a.num_used == 3
    assert r.evict(1) == 1 and r.peek(toks) == 4
    assert r.evict(10) == 2 and r.num_blocks == 0 and a.num_used == 0
    assert r.hit_tokens == 8 and r.queries == 2


def test_radix_keeps_blocks_in_use():
    a = BlockAllocator(4)
    r = RadixCache(a, block_size=1)
    b = a.allocate(2)
    r.insert([5, 6], b)
    assert r.evict(5) == 0  # the sequence still holds both
    a.decref(b[1])
    assert r.evict(5) == 1 and r.peek([5, 6]) == 1


def _seq(i: int, tokens: list[int], max_tokens: int) -> Sequence:
    req = GenerationRequest(f"r{i}", SamplingParams(max_tokens=max_tokens), prompt_token_ids=tokens)
    return Sequence(i, req, RequestStream(req.request_id), req.sampling, list(tokens), len(tokens), 0.0)


def _check(sched: Scheduler, alloc: BlockAllocator, radix: RadixCache | None) -> None:
    alloc.check_consistency()
    expected: Counter[int] = Counter()
    for s in sched.running:
        assert len(set(s.blocks)) == len(s.blocks)
        assert len(s.blocks) * sched.block_size >= s.num_computed
        expected.update(s.blocks)
    for s in sched.waiting:
        assert s.blocks == [] and s.num_computed == 0
    if radix is not None:
        stack = list(radix.root.children.values())
        while stack:
            n = stack.pop()
            stack.extend(n.children.values())
            expected[n.block] += 1
    for b in range(alloc.num_blocks):
        assert alloc.refcount(b) == expected[b], f"block {b}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    num_blocks=st.integers(6, 40),
    block_size=st.sampled_from([1, 2, 4]),
    prefix_cache=st.booleans(),
)
def test_scheduler_never_leaks_or_deadlocks(seed, num_blocks, block_size, prefix_cache):
    rng = random.Random(seed)
    alloc = BlockAllocator(num_blocks)
    radix = RadixCache(alloc, block_size) if prefix_cache else None
    sched = Scheduler(
        alloc, radix, block_size, max_batch_size=rng.randint(1, 6), max_num_batched_tokens=rng.randint(1, 16)
    )
    capacity = num_blocks * block_size
    shared = [rng.randint(0, 5) for _ in range(rng.randint(0, 6))]
    pending = []
    for i in range(rng.randint(1, 12)):
        plen = rng.randint(1, max(1, min(capacity - 1, 14)))
        toks = (shared + [rng.randint(0, 5) for _ in range(plen)])[: max(1, min(capacity - 1, 20))]
        pending.append(_seq(i, toks, rng.randint(1, 10)))
    done = 0
    total = len(pending)
    for _ in range(5000):
        if pending and rng.random() < 0.5:
            sched.add(pending.pop())
        if not sched.has_work():
            if not pending:
                break
            continue
        batch = sched.schedule(now=0.0)
        assert not batch.expired
        done += len(batch.out_of_memory)
        sched.update(batch.items)
        for s, _ in batch.items:
            if s.num_computed == len(s.token_ids):
                s.token_ids.append(rng.randint(0, 5))
                if s.num_generated >= s.params.max_tokens or len(s.token_ids) >= capacity:
                    sched.remove(s)
                    done += 1
        if sched.running and rng.random() < 0.05:  # abort one
            sched.remove(sched.running[rng.randrange(len(sched.running))])
            done += 1
        _check(sched, alloc, radix)
    assert not sched.has_work() and not pending and done == total
    used_by_tree = radix.num_blocks if radix else 0
    assert alloc.num_used == used_by_tree
    if radix:
        radix.clear()
    assert alloc.num_used == 0 and alloc.num_free == num_blocks
