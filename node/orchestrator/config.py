"""The orchestrator's one config object, validated when built.

Like nano-vllm's ``Config``: a frozen dataclass that checks itself in
``__post_init__`` (errors name the field), built once from ``node.config.Settings``
by ``from_settings`` in the daemon's start-up; each helper copies the fields it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from consensus import quorum as q
from node import wire
from node.config import FaultMode

__all__ = ["OrchestratorConfig"]


@dataclass(frozen=True)
class OrchestratorConfig:
    """Protocol knobs the orchestrator reads (filled from ``node.config.Settings``).

    ``fault`` accepts a ``FaultMode`` or its string value and is stored as the enum.
    """

    fault: FaultMode = FaultMode.HONEST
    embedding_model: str = "all-minilm-l6-v2"
    quorum: q.QuorumConfig = field(default_factory=q.QuorumConfig)
    limits: wire.WireLimits = field(default_factory=wire.WireLimits)
    tick_s: float = 0.2
    reveal_request_resend_s: float = 3.0
    # Packets for request ids this node has not seen ("orphans") are kept so they can be
    # replayed when the request overtakes them, but only this long and only this many:
    # otherwise any peer could fill the disk with packets for made-up ids.
    orphan_packet_ttl_s: float = 600.0
    max_orphan_packets: int = 10_000
    orphan_prune_interval_s: float = 30.0

    def __post_init__(self) -> None:
        try:
            fault = FaultMode(self.fault)
        except ValueError:
            modes = tuple(m.value for m in FaultMode)
            raise ValueError(f"fault must be one of {modes}, got {self.fault!r}") from None
        object.__setattr__(self, "fault", fault)
        if not self.orphan_packet_ttl_s > 0:
            raise ValueError(f"orphan_packet_ttl_s must be > 0, got {self.orphan_packet_ttl_s!r}")
        if self.max_orphan_packets < 1:
            raise ValueError(f"max_orphan_packets must be >= 1, got {self.max_orphan_packets!r}")
        if not self.orphan_prune_interval_s > 0:
            raise ValueError(f"orphan_prune_interval_s must be > 0, got {self.orphan_prune_interval_s!r}")

    @property
    def silent(self) -> bool:
        """A ``silent`` node never infers and never publishes protocol packets."""
        return self.fault is FaultMode.SILENT

    @classmethod
    def from_settings(cls, settings: Any) -> OrchestratorConfig:
        """The config for ``settings`` (a ``node.config.Settings``): the one place they meet."""
        window_ms = int(settings.reveal_window_s * 1000)
        return cls(
            fault=FaultMode(settings.fault),
            embedding_model=settings.embedding_model,
            limits=settings.wire,
            quorum=q.QuorumConfig(
                reveal_request_grace_ms=int(settings.reveal_grace_s * 1000),
                commit_grace_ms=max(1000, int(settings.reveal_grace_s * 1000)),
                reveal_window_ms=window_ms,
                consensus_window_ms=window_ms,
                hamming_tolerance=settings.hamming_tolerance,
                max_commits=settings.wire.max_commits,
            ),
            orphan_packet_ttl_s=settings.orphan_packet_ttl_s,
            max_orphan_packets=settings.max_orphan_packets,
        )
