"""Deadlines are enforced in every state: a sequence that is waiting, preempted or
running when its request's deadline passes is dropped at the next step with its KV
blocks freed, and the core ends its stream with finish_reason "expired" (keeping the
tokens made so far)."""

from __future__ import annotations

import time

import pytest

from engine.core import GenerationRequest, SamplingParams, TokenEvent
from engine.kv_cache import BlockAllocator
from engine.radix import RadixCache
from engine.scheduler import Scheduler, Sequence
from engine.types import RequestStream

pytestmark = pytest.mark.timeout(120)


def _seq(i: int, tokens: list[int], deadline: float | None) -> Sequence:
    req = GenerationRequest(
        f"r{i}", SamplingParams(max_tokens=50), prompt_token_ids=tokens, deadline=deadline
    )
    return Sequence(i, req, RequestStream(req.request_id), req.sampling, list(tokens), len(tokens), 0.0)


@pytest.mark.parametrize("prefix_cache", [False, True])
def test_running_sequence_past_deadline_expires_and_frees_blocks(prefix_cache):
    alloc = BlockAllocator(16)
    radix = RadixCache(alloc, 4) if prefix_cache else None
    sched = Scheduler(alloc, radix, 4, max_batch_size=4, max_num_batched_tokens=64)
    late, keep = _seq(0, list(range(10)), deadline=100.0), _seq(1, [7, 7, 7], deadline=None)
    sched.add(late)
    sched.add(keep)
    batch = sched.schedule(now=50.0)
    assert {s.request_id for s, _ in batch.items} == {"r0", "r1"} and not batch.expired
    sched.update(batch.items)
    for s in (late, keep):
        s.token_ids.append(1)  # each sampled a token: both have a decode to run next
    assert late in sched.running and late.blocks
    held = set(late.blocks)

    batch = sched.schedule(now=100.5)
    assert batch.expired == [late]
    assert [s for s, _ in batch.items] == [keep]  # the other sequence runs on
    assert late not in sched.running and late not in sched.waiting
    assert late.blocks == []
    in_tree = radix.num_blocks if radix else 0
    # late's private blocks are free again; only the prefix cache may still hold full ones
    assert alloc.num_used == len(keep.blocks) + in_tree
    if not prefix_cache:
        assert all(alloc.refcount(b) == 0 for b in held)


def test_preempted_sequence_past_deadline_expires():
    alloc = BlockAllocator(4)
    sched = Scheduler(alloc, None, 4, max_batch_size=4, max_num_batched_tokens=64)
    old, new = _seq(0, list(range(7)), deadline=None), _seq(1, list(range(7)), deadline=10.0)
    sched.add(old)
    sched.update(sched.schedule(now=0.0).items)
    sched.add(new)  # admitted a step later: the newest running sequence
    sched.update(sched.schedule(now=0.0).items)  # 2 blocks each: the cache is full
    for s in (old, new):
        s.token_ids.extend([1, 1])  # they grow past their second block
    batch = sched.schedule(now=0.0)
    assert new in sched.waiting and new.admitted  # preempted to make room for the older one
    sched.update(batch.items)
    batch = sched.schedule(now=11.0)
    assert batch.expired == [new]
    assert not sched.waiting and sched.running == [old]


def test_engine_aborts_running_request_at_deadline(make_engine):
    eng = make_engine(enable_prefix_cache=False, max_batch_size=4)
    eng.start()
    deadline = time.time() + 1.0
    stream = eng.submit(
        GenerationRequest(
            "slow",
            SamplingParams(max_tokens=2000, ignore_eos=True),
            prompt="Count forever:",
            deadline=deadline,
        )
    )
    assert isinstance(stream.get(timeout=30), TokenEvent)  # it is running
    res = stream.result(timeout=60)
    assert res.finish_reason == "expired"
    assert 0 < res.completion_tokens < 2000  # stopped mid-generation, tokens kept
    assert time.time() >= deadline
    # its slot and every KV block are free again
    assert eng.allocator.num_used == 0
    st = eng.stats()
    assert st["running"] == 0 and st["waiting"] == 0
