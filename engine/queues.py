"""Waiting queues and the bridge from worker threads to async callers.

`DeadlineQueue` orders waiting work by (priority class, deadline, arrival): seed
001's inference queue (earliest deadline first) and embedding queue (consensus
verification before ordinary work, then deadline). Dispatchers scan it in order
and take what a free worker can run, so one busy model does not block requests for
another. It is not locked itself; each engine guards it with its own condition.

`AsyncMailbox` carries items from scheduler/worker threads to one consumer task in
an anyio event loop (trio in the daemon, asyncio in some tools). A producer never
blocks and never waits for the loop: it appends under a lock and, at most once per
wake-up, schedules a callback in the loop that sets an anyio Event.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel
from anyio import RunFinishedError

T = TypeVar("T")


def _deadline_key(deadline: float | None) -> float:
    return math.inf if deadline is None else float(deadline)


class DeadlineQueue(Generic[T]):
    """Items ordered by (priority, deadline, arrival); lower sorts first.

    `None` deadlines sort after every real deadline of the same priority. Items are
    compared by identity for removal, never by value.
    """

    def __init__(self) -> None:
        self._entries: list[tuple[int, float, int, T]] = []
        self._seq = itertools.count()

    def push(self, item: T, *, deadline: float | None = None, priority: int = 0) -> None:
        entry = (int(priority), _deadline_key(deadline), next(self._seq), item)
        bisect.insort(self._entries, entry, key=lambda e: e[:3])

    def remove(self, item: T) -> bool:
        """Remove `item` if queued; True when it was."""
        for i, entry in enumerate(self._entries):
            if entry[3] is item:
                del self._entries[i]
                return True
        return False

    def pop_expired(self, now: float) -> list[T]:
        """Remove and return items whose deadline is at or before `now`."""
        expired = [e[3] for e in self._entries if e[1] <= now]
        if expired:
            self._entries = [e for e in self._entries if e[1] > now]
        return expired

    def earliest_deadline(self) -> float | None:
        finite = [e[1] for e in self._entries if e[1] != math.inf]
        return min(finite) if finite else None

    def take(self, select: Callable[[T], bool]) -> list[T]:
        """Remove and return, in order, the items for which `select` says True.

        `select` sees items in queue order and may keep state (e.g. capacity left),
        which is how dispatchers fill free workers without skipping order.
        """
        taken: list[T] = []
        kept: list[tuple[int, float, int, T]] = []
        for entry in self._entries:
            if select(entry[3]):
                taken.append(entry[3])
            else:
                kept.append(entry)
        if taken:
            self._entries = kept
        return taken

    def drain(self) -> list[T]:
        """Remove and return everything, in order."""
        items = [e[3] for e in self._entries]
        self._entries = []
        return items

    def __iter__(self) -> Iterator[T]:
        return iter([e[3] for e in self._entries])

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)


class AsyncMailbox(Generic[T]):
    """Many threads put, one task in the creating event loop gets.

    Must be created inside a running anyio loop (trio or asyncio); `put` may be
    called from any thread, including the loop's own. If the loop has finished,
    items are kept but nobody is woken (the consumer is gone anyway).
    """

    def __init__(self) -> None:
        self._token = anyio.lowlevel.current_token()
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._event = anyio.Event()
        self._wake_pending = False

    def put(self, item: T) -> None:
        with self._lock:
            self._items.append(item)
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self._token.backend_class.run_sync_soon(self._wake, (), self._token.native_token)
        except RunFinishedError:
            pass

    def _wake(self) -> None:  # runs in the loop
        with self._lock:
            self._wake_pending = False
        self._event.set()

    def get_nowait(self) -> T | None:
        with self._lock:
            return self._items.popleft() if self._items else None

    async def get(self) -> T:
        """Next item; waits without polling. Cancellable."""
        while True:
            with self._lock:
                if self._items:
                    return self._items.popleft()
            # Replacing the event happens on the loop thread, as does _wake, so a
            # wake-up scheduled after this point always sets the event we wait on.
            if self._event.is_set():
                self._event = anyio.Event()
                continue
            await self._event.wait()
