"""Who may spend the network's compute through this node, and how fast.

A verified call (`/verified/v1`) is signed with the node's own client key and runs on
every node of the quorum, so each caller is named and held to a budget:

- `authenticate` names the caller: the API key it sent (`Authorization: Bearer <key>`,
  what OpenAI clients send) when the node has keys, else the client address. A missing
  or wrong key is a 401 in the OpenAI error shape.
- `CallerGate` gives each caller a token bucket (calls per minute with a burst) and a cap
  on calls in flight; over either is a 429 whose message says which.

State lives in the process (per node), which is what a per-node budget needs.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from fastapi import Request

from node.api.errors import ApiError

__all__ = ["CallerGate", "authenticate"]

_MAX_CALLERS = 10_000  # buckets kept; the idlest are dropped beyond this


def authenticate(request: Request, keys: Sequence[str]) -> str:
    """The caller's name for rate limiting: `key:<sha256 prefix>` or `addr:<host>`."""
    if not keys:
        client = request.client
        return f"addr:{client.host if client else 'unknown'}"
    authorization = request.headers.get("authorization")
    if not authorization:
        raise ApiError(
            401,
            "missing_api_key",
            "this node needs an API key: send 'Authorization: Bearer <key>' (the openai client's api_key)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    scheme, _, credential = authorization.partition(" ")
    given = credential.strip().encode()
    # Compare against every key (no early exit), so timing tells nothing about which matched.
    matched = [secrets.compare_digest(given, k.encode()) for k in keys]
    if scheme.lower() != "bearer" or not any(matched):
        raise ApiError(
            401, "invalid_api_key", "the API key is not valid", headers={"WWW-Authenticate": "Bearer"}
        )
    return "key:" + hashlib.sha256(given).hexdigest()[:16]


@dataclass
class _Bucket:
    tokens: float
    updated: float
    in_flight: int = 0


class CallerGate:
    """Per-caller token bucket (`per_min` calls a minute, `burst` at once) and concurrency cap."""

    def __init__(self, per_min: float, burst: int, max_concurrent: int) -> None:
        self.rate = per_min / 60.0
        self.burst = float(burst)
        self.max_concurrent = max_concurrent
        self._buckets: dict[str, _Bucket] = {}

    def _bucket(self, caller: str, now: float) -> _Bucket:
        bucket = self._buckets.get(caller)
        if bucket is None:
            if len(self._buckets) >= _MAX_CALLERS:
                idle = [c for c, b in self._buckets.items() if b.in_flight == 0]
                for c in sorted(idle, key=lambda c: self._buckets[c].updated)[: len(idle) // 2 + 1]:
                    del self._buckets[c]
            bucket = self._buckets[caller] = _Bucket(tokens=self.burst, updated=now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        return bucket

    @contextmanager
    def admit(self, caller: str) -> Iterator[None]:
        """Hold one of `caller`'s slots for the duration, or raise a 429 naming the limit."""
        now = time.monotonic()
        bucket = self._bucket(caller, now)
        if bucket.in_flight >= self.max_concurrent:
            raise ApiError(
                429,
                "too_many_concurrent",
                f"this caller already has {bucket.in_flight} verified calls in flight "
                f"(limit {self.max_concurrent}); wait for one to finish",
                headers={"Retry-After": "1"},
            )
        if bucket.tokens < 1.0:
            wait = (1.0 - bucket.tokens) / self.rate
            raise ApiError(
                429,
                "rate_limited",
                f"rate limit of {self.rate * 60:g} verified calls a minute reached; retry in {wait:.1f} s",
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        bucket.tokens -= 1.0
        bucket.in_flight += 1
        try:
            yield
        finally:
            bucket.in_flight -= 1
