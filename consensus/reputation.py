"""Per-peer reputation from reveal outcomes: simple counts and an explainable score.

Only facts a node observed itself are counted: a named reveal that was accepted, one
that was rejected (with its reason), or one that never came. The score is a smoothed
ratio so a new peer starts at 0.5 and one bad reveal weighs as much as three good ones
(cheating is worse than being slow).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["PeerRecord", "Reputation", "REJECT_WEIGHT"]

REJECT_WEIGHT = 3


@dataclass(slots=True)
class PeerRecord:
    accepted: int = 0
    rejected: int = 0
    missing: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def score(self) -> float:
        """``(accepted + 1) / (accepted + 3*rejected + missing + 2)``, in (0, 1)."""
        return (self.accepted + 1) / (self.accepted + REJECT_WEIGHT * self.rejected + self.missing + 2)

    def explain(self) -> str:
        return (
            f"score {self.score:.2f} = ({self.accepted} accepted + 1) / ({self.accepted} accepted"
            f" + {REJECT_WEIGHT}x{self.rejected} rejected + {self.missing} missing + 2)"
        )


@dataclass(slots=True)
class Reputation:
    """Reputation of all peers seen; keyed by node id (hex public key)."""

    peers: dict[str, PeerRecord] = field(default_factory=dict)

    def record(self, statuses: Mapping[str, str]) -> None:
        """Add one finished request's outcomes (``QuorumMachine.reveal_statuses()``).

        Values: ``accepted``, ``missing``, ``rejected:<reason>``; ``pending`` is ignored.
        """
        for node_id, status in statuses.items():
            if status == "pending":
                continue
            rec = self.peers.setdefault(node_id, PeerRecord())
            if status == "accepted":
                rec.accepted += 1
            elif status == "missing":
                rec.missing += 1
            elif status.startswith("rejected"):
                rec.rejected += 1
                reason = status.partition(":")[2] or "unknown"
                rec.reasons[reason] = rec.reasons.get(reason, 0) + 1
            else:
                raise ValueError(f"unknown reveal status {status!r} for {node_id}")

    def get(self, node_id: str) -> PeerRecord:
        return self.peers.get(node_id, PeerRecord())

    def score(self, node_id: str) -> float:
        return self.get(node_id).score

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view for the daemon's store and the dashboard (includes scores)."""
        return {n: {**asdict(r), "score": r.score} for n, r in sorted(self.peers.items())}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Reputation:
        return cls(
            {
                n: PeerRecord(
                    int(r["accepted"]), int(r["rejected"]), int(r["missing"]), dict(r.get("reasons", {}))
                )
                for n, r in d.items()
            }
        )
