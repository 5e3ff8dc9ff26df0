"""In-memory engine log: what each worker did to which request, and how fast.

The seeds' LLMEngineLogEntry/getEngineLogs/searchEngineLogs. Kept in a bounded
ring buffer (a node runs for days) and written from scheduler threads as well as
the event loop, hence the lock. Entries are plain frozen dataclasses so the HTTP
API can serve them with `to_dict()`.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class LogType(StrEnum):
    LOAD = "load"  # a worker finished loading its model
    UNLOAD = "unload"  # a worker was stopped
    QUEUED = "queued"  # a request entered the waiting queue
    START = "start"  # a request was handed to a worker
    PROGRESS = "progress"  # token progress of a running request
    FINISH = "finish"  # a request finished (stop/length)
    ERROR = "error"  # a worker or request failed
    ABORT = "abort"  # a request was aborted (by a caller or by unloading)
    EXPIRED = "expired"  # a request's deadline passed
    RECHECK = "recheck"  # a revealed output was re-checked against its model


@dataclass(frozen=True)
class LogEntry:
    seq: int
    ts: float  # time.time()
    type: LogType
    worker_id: str | None = None
    model: str | None = None
    request_id: str | None = None
    message: str = ""
    tokens: int | None = None
    tokens_per_s: float | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["type"] = self.type.value
        return d


def _parse_types(type: LogType | str | Iterable[LogType | str] | None) -> set[LogType] | None:
    if type is None:
        return None
    items = [type] if isinstance(type, str) else list(type)
    out: set[LogType] = set()
    for t in items:
        try:
            out.add(LogType(t))
        except ValueError:
            valid = ", ".join(x.value for x in LogType)
            raise ValueError(f"unknown log type {t!r}; valid types: {valid}") from None
    return out


class EngineLog:
    """Thread-safe bounded log with search."""

    def __init__(self, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self._entries: deque[LogEntry] = deque(maxlen=max_entries)
        self._lock = threading.Lock()
        self._seq = itertools.count(1)

    def append(self, type: LogType | str, **fields: Any) -> LogEntry:
        with self._lock:
            entry = LogEntry(seq=next(self._seq), ts=time.time(), type=LogType(type), **fields)
            self._entries.append(entry)
        return entry

    def last(self, n: int | None = None) -> list[LogEntry]:
        """The `n` most recent entries, oldest first (all when n is None)."""
        if n is not None and n < 0:
            raise ValueError(f"last_n must be >= 0, got {n}")
        with self._lock:
            entries = list(self._entries)
        return entries if n is None else entries[len(entries) - n :] if n else []

    def search(
        self,
        *,
        type: LogType | str | Iterable[LogType | str] | None = None,
        worker_id: str | None = None,
        request_id: str | None = None,
        model: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[LogEntry]:
        """Entries matching every given filter, oldest first; `limit` keeps the newest."""
        types = _parse_types(type)
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        with self._lock:
            entries = list(self._entries)
        out = [
            e
            for e in entries
            if (types is None or e.type in types)
            and (worker_id is None or e.worker_id == worker_id)
            and (request_id is None or e.request_id == request_id)
            and (model is None or e.model == model)
            and (since is None or e.ts >= since)
        ]
        if limit is not None:
            out = out[len(out) - limit :] if limit else []
        return out

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
