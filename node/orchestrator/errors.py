"""Errors the orchestrator raises to its callers (the API, the daemon's compute).

They live in the core, not in the API seam, so the core never imports the HTTP layer:
the API maps ``RequestRejected.reason`` to a status code (``node.api.errors``).
"""

from __future__ import annotations

__all__ = ["InferenceFailed", "RequestRejected"]


class RequestRejected(Exception):
    """A request frame that decoded fine but that this node refuses (not a wire error).

    `reason` is a short machine-readable code (e.g. "no_accepted_model", "expired",
    "queue_full"); `str(exc)` is the human explanation. The API answers 400/409/503
    with both and never gossips the frame.
    """

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason


class InferenceFailed(Exception):
    """Local inference did not produce an output (expired, aborted, engine error)."""
