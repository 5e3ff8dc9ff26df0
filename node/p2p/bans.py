"""Bans that outlive a restart, for peers (connections) and senders (signing keys).

Two kinds, because two different things misbehave:
- a *peer* is the libp2p connection that forwarded invalid frames: banning it cuts off
  that link (penalties come from ``ratelimit.PenaltyBox`` in the gossip validator);
- a *sender* is the key that signed packets which failed a proof-of-inference re-check:
  its frames are dropped whoever relays them, first throttled, then banned.

The running node keeps bans on the monotonic clock; the ``BanBook`` (the node's SQLite
store) keeps them in wall-clock milliseconds, so a restarted node re-imposes every ban
that has not ended yet.
"""

from __future__ import annotations

import time
from typing import Protocol

from node import clock
from node.logs import get_logger
from node.p2p.ratelimit import KeyedRateLimiter, PenaltyBox

log = get_logger(__name__)

__all__ = ["BanBook", "SenderPolicy", "mono_to_wall_ms", "wall_ms_to_mono"]


class BanBook(Protocol):
    """Where bans are kept across restarts (``node.store.Store`` implements it)."""

    def save_ban(self, kind: str, key: str, *, until_ms: int, reason: str) -> None: ...

    def active_bans(self, kind: str, *, now_ms: int | None = None) -> dict[str, int]: ...


def mono_to_wall_ms(until_mono: float) -> int:
    return clock.now_ms() + int((until_mono - time.monotonic()) * 1000)


def wall_ms_to_mono(until_ms: int) -> float:
    return time.monotonic() + (until_ms - clock.now_ms()) / 1000


class SenderPolicy:
    """What a signing key's failed re-checks cost it: each failure throttles the key to
    ``throttled_rate`` frames/s (bursts of ``throttled_burst``) for ``throttle_s``; enough
    failures (``ban_points``, decaying with ``half_life_s``) ban it for ``ban_s``.

    Throttling first lets an honest node that failed once (float noise outside the
    re-check budget, a corrupted model) keep taking part while its operator notices, so
    the throttled rate must fit a node's ordinary traffic: a ``peer_status`` every 2 s,
    ``peer_info``, and a commit and a reveal per request, several requests at once. At
    1 frame/s with no burst (the first setting) the status heartbeat alone used half
    the budget and concurrent commits were dropped: one unlucky re-check took an honest
    node out of every quorum for 10 minutes. The gossip node sets a tenth of its sender
    limits (10 frames/s, bursts of 40 by default): a flood from the key is still cut
    tenfold, and a key that fails again and again is cut off by the ban."""

    def __init__(
        self,
        *,
        ban_points: float = 2.5,  # the third failure within about an hour bans
        half_life_s: float = 3600.0,
        ban_s: float = 86_400.0,
        throttle_s: float = 600.0,
        throttled_rate: float = 10.0,
        throttled_burst: float = 40.0,
    ) -> None:
        self.penalties = PenaltyBox(ban_points, half_life_s, ban_s)
        self.throttle_s = throttle_s
        self._throttled_until: dict[str, float] = {}
        self._throttle = KeyedRateLimiter(throttled_rate, throttled_burst)

    def is_banned(self, sender_id: str, now: float) -> bool:
        return self.penalties.is_banned(sender_id, now)

    def allow(self, sender_id: str, now: float) -> bool:
        """False when the sender is throttled and over its reduced rate."""
        until = self._throttled_until.get(sender_id)
        if until is None:
            return True
        if until <= now:
            del self._throttled_until[sender_id]
            return True
        return self._throttle.allow(sender_id, now)

    def fail(self, sender_id: str, now: float, points: float = 1.0) -> bool:
        """Charge one failure; True when it bans the sender."""
        self._throttled_until[sender_id] = now + self.throttle_s
        return self.penalties.add(sender_id, points, now)
