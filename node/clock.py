"""Wall-clock milliseconds: the one time unit of packets, the store and request views.

Packets carry ``ts_ms`` and deadlines are ``created + max_time_ms``, so every part of
the node reads the clock through this one function (tests patch it in one place).
"""

from __future__ import annotations

import time

__all__ = ["now_ms"]


def now_ms() -> int:
    """Milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000
