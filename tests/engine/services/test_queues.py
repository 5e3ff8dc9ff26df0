"""DeadlineQueue ordering and the thread -> event-loop mailbox."""

from __future__ import annotations

import threading

import anyio
import pytest

from engine.queues import AsyncMailbox, DeadlineQueue


def test_order_is_priority_then_deadline_then_arrival() -> None:
    q: DeadlineQueue[str] = DeadlineQueue()
    q.push("normal-late", deadline=200, priority=1)
    q.push("normal-none", deadline=None, priority=1)
    q.push("consensus-late", deadline=300, priority=0)
    q.push("normal-early", deadline=100, priority=1)
    q.push("consensus-early", deadline=50, priority=0)
    q.push("normal-early-2", deadline=100, priority=1)
    assert list(q) == [
        "consensus-early",
        "consensus-late",
        "normal-early",
        "normal-early-2",
        "normal-late",
        "normal-none",
    ]
    assert q.earliest_deadline() == 50


def test_remove_expire_take_drain() -> None:
    q: DeadlineQueue[list] = DeadlineQueue()
    a, b, c, d = [1], [1], [2], [3]  # equal values, distinct identities
    q.push(a, deadline=10)
    q.push(b, deadline=20)
    q.push(c, deadline=30)
    q.push(d)
    assert q.remove(b) and not q.remove(b)
    assert list(q) == [a, c, d] and list(q)[0] is a
    assert q.pop_expired(10.0) == [a]
    assert q.take(lambda x: x == [3]) == [d]
    assert q.drain() == [c] and len(q) == 0 and not q
    assert q.earliest_deadline() is None


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"])
async def test_mailbox_carries_items_from_threads_in_order(anyio_backend: str) -> None:
    box: AsyncMailbox[tuple[int, int]] = AsyncMailbox()
    n_threads, per_thread = 4, 500

    def produce(t: int) -> None:
        for i in range(per_thread):
            box.put((t, i))

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    seen: dict[int, list[int]] = {t: [] for t in range(n_threads)}
    with anyio.fail_after(20):
        for _ in range(n_threads * per_thread):
            t, i = await box.get()
            seen[t].append(i)
    for th in threads:
        th.join()
    assert all(v == list(range(per_thread)) for v in seen.values())
    assert box.get_nowait() is None


@pytest.mark.anyio
async def test_mailbox_get_is_cancellable_and_wakes_on_late_put() -> None:
    box: AsyncMailbox[str] = AsyncMailbox()
    with anyio.move_on_after(0.05) as scope:
        await box.get()
    assert scope.cancelled_caught
    timer = threading.Timer(0.05, box.put, args=("late",))
    timer.start()
    with anyio.fail_after(10):
        assert await box.get() == "late"
    timer.join()
