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
    ``throttled_rate`` frames/s for ``throttle_s``; enough failures (``ban_points``,
    decaying with ``half_life_s``) ban it for ``ban_s``.

    Throttling first lets an honest node that failed once (a bug, a corrupted model) keep
    talking while its operator notices; a key that fails again and again is cut off."""

    def __init__(
        self,
        *,
        ban_points: float = 2.5,  # the third failure within about an hour bans
        half_life_s: float = 3600.0,
        ban_s: float = 86_400.0,
        throttle_s: float = 600.0,
        throttled_rate: float = 1.0,
    ) -> None:
        self.penalties = PenaltyBox(ban_points, half_life_s, ban_s)
        self.throttle_s = throttle_s
        self._throttled_until: dict[str, float] = {}
        self._throttle = KeyedRateLimiter(throttled_rate, max(1.0, throttled_rate))

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
