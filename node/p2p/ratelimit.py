"""Rate limits and penalties for gossip peers.

Pure bookkeeping with an injected clock (seconds, monotonic) so it is testable without
sleeping. Memory is bounded: a flood of new keys evicts the least recently used ones
rather than growing without limit.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class TokenBucket:
    """`rate` tokens per second, at most `burst` banked; one token per message."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def allow(self, now: float, cost: float = 1.0) -> bool:
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


class KeyedRateLimiter:
    """One token bucket per key (peer id, sender key), LRU-bounded."""

    def __init__(self, rate: float, burst: float, max_keys: int = 10_000) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError(
                f"rate limiter needs rate > 0, burst >= 1, max_keys >= 1 (got {rate}, {burst}, {max_keys})"
            )
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[object, TokenBucket] = OrderedDict()

    def allow(self, key: object, now: float) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, self.burst, now)
            self._buckets[key] = bucket
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.allow(now)

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass
class _Penalty:
    points: float
    updated: float


class PenaltyBox:
    """Penalty points per peer that decay exponentially; a peer over `threshold` is banned
    for `ban_s` seconds.

    Decay rather than a plain count so an honest peer that relays the odd bad frame
    (clock drift, a config mismatch) never accumulates its way to a ban, while a peer
    that keeps sending garbage crosses the threshold quickly.
    """

    def __init__(self, threshold: float, half_life_s: float, ban_s: float, max_peers: int = 10_000) -> None:
        if threshold <= 0 or half_life_s <= 0 or ban_s <= 0:
            raise ValueError("penalty threshold, half-life and ban duration must be positive")
        self.threshold = threshold
        self.half_life_s = half_life_s
        self.ban_s = ban_s
        self.max_peers = max_peers
        self._points: OrderedDict[object, _Penalty] = OrderedDict()
        self._banned_until: dict[object, float] = {}

    def points(self, peer: object, now: float) -> float:
        entry = self._points.get(peer)
        if entry is None:
            return 0.0
        return entry.points * math.pow(0.5, max(0.0, now - entry.updated) / self.half_life_s)

    def add(self, peer: object, points: float, now: float) -> bool:
        """Charge `points`; return True when this charge bans the peer."""
        if points <= 0 or self.is_banned(peer, now):
            return False
        total = self.points(peer, now) + points
        self._points[peer] = _Penalty(total, now)
        self._points.move_to_end(peer)
        while len(self._points) > self.max_peers:
            self._points.popitem(last=False)
        if total >= self.threshold:
            self._banned_until[peer] = now + self.ban_s
            self._points.pop(peer, None)
            return True
        return False

    def restore_ban(self, peer: object, until: float) -> None:
        """Re-impose a ban that ends at ``until`` (same clock as ``now``): bans kept on
        disk survive a restart this way."""
        if until > self._banned_until.get(peer, -math.inf):
            self._banned_until[peer] = until
        self._points.pop(peer, None)

    def ban_ends(self, peer: object) -> float | None:
        return self._banned_until.get(peer)

    def is_banned(self, peer: object, now: float) -> bool:
        until = self._banned_until.get(peer)
        return until is not None and until > now

    def banned(self, now: float) -> list[object]:
        return [p for p, until in self._banned_until.items() if until > now]

    def expire(self, now: float) -> list[object]:
        """Forget bans that ended; return those peers so the caller can lift them."""
        ended = [p for p, until in self._banned_until.items() if until <= now]
        for peer in ended:
            del self._banned_until[peer]
        return ended
