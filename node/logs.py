"""Logging set-up: structlog everywhere, JSON lines for machines, a readable console for people.

Output goes to stderr so stdout stays clean for command results (``rakis id``,
``rakis submit --json``). Standard-library loggers (libp2p, hypercorn, transformers)
are routed through the same renderer so one node writes one format.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

LEVELS = ("debug", "info", "warning", "error", "critical")

# Keys whose values must never reach a log line, whatever a caller passes.
SECRET_KEYS = frozenset(
    {"seed", "signing_key", "private_key", "secret", "password", "admin_token", "token", "authorization"}
)
REDACTED = "[redacted]"


def _redact_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """Last line of defence: drop values of secret-looking keys before rendering."""
    for key in list(event_dict):
        if key.lower() in SECRET_KEYS:
            event_dict[key] = REDACTED
    return event_dict


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time, so a replaced stderr (test
    runners, Typer's CliRunner) that is later closed never breaks logging."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    name = level.strip().lower()
    if name not in LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    return logging.getLevelName(name.upper())


def configure_logging(level: str | int = "info", json: bool | None = None, stream: Any = None) -> None:
    """Configure structlog and the stdlib root logger; safe to call again (e.g. in tests).

    ``json=None`` picks JSON lines when the stream is not a terminal (daemons, CI,
    testnet subprocesses) and a coloured console renderer when it is.
    """
    levelno = _level_number(level)
    target = stream if stream is not None else sys.stderr
    if json is None:
        json = not (hasattr(target, "isatty") and target.isatty())

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_secrets,
    ]
    renderer: Any
    if json:
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=hasattr(target, "isatty") and target.isatty())

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(formatter)
    handler.set_name("rakis")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "rakis"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(levelno)
    route_library_logs_to_root()

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def route_library_logs_to_root() -> None:
    """Send py-libp2p's log records through our handler.

    Importing libp2p (without LIBP2P_DEBUG) detaches its "libp2p" logger from the
    root (``propagate = False``, no handlers), which silently drops its warnings:
    a daemon would never show why a dial or a stream failed. Called after
    configuring logging and again by the gossip layer after it imports libp2p.
    """
    if os.environ.get("LIBP2P_DEBUG"):
        return  # the user asked for libp2p's own debug logging setup
    lib = logging.getLogger("libp2p")
    lib.handlers.clear()
    lib.propagate = True


def get_logger(name: str | None = None, **initial: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger; ``initial`` key/values are bound to every line it writes."""
    return structlog.get_logger(name, **initial)


__all__ = ["LEVELS", "configure_logging", "get_logger", "route_library_logs_to_root"]


def search_entries(entries: list[dict[str, Any]], search: str | None) -> list[dict[str, Any]]:
    """The entries whose JSON form contains ``search`` (case-insensitive); all when it is empty.

    The node's event log and the engines' logs are searched the same way, so a term found
    in one view is found in the merged ``/v1/logs`` too."""
    if not search:
        return entries
    needle = search.lower()
    return [e for e in entries if needle in json.dumps(e, default=str).lower()]
