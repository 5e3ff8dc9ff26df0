"""The request stages a client sees, in order: the one copy of the names.

A module of its own, with no imports, so the CLI's progress display
(``node.cli.progress``) can read the names without pulling in trio, numpy or the
quorum machine. ``node.orchestrator.views`` derives a request's stage from its machine.
"""

from __future__ import annotations

__all__ = ["STAGES"]

# Request-level stages shown to clients (facade contract), first to last.
STAGES: tuple[str, ...] = ("queued", "inferring", "committed", "revealing", "verifying", "done")
