"""The in-memory companion of one pending request's quorum machine.

The machine (``consensus.quorum.QuorumMachine``) holds the protocol state and is
snapshotted to the store; this record holds what only this process needs: the decoded
request, whether our inference, a verification or a re-check is running, and when we last re-sent
a reveal request or our reveal (re-sends are rate-limited, not persisted). The
orchestrator owns these records; views and the reveal re-sender read and update them.
A record is made for a new request (``start``) or from a stored snapshot (``restore``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from consensus import quorum as q
from node import wire

__all__ = ["LiveRequest"]


@dataclass
class LiveRequest:
    """One pending request: its signed packet, decoded body and machine."""

    packet: wire.SignedPacket
    body: wire.InferenceRequest
    machine: q.QuorumMachine
    own_model: str | None = None
    inferring: bool = False
    last_rr_sent_ms: int = 0
    last_reveal_sent_ms: int = 0
    verifying: set[str] = field(default_factory=set)  # inference ids being embedded
    rechecking: set[str] = field(default_factory=set)  # re-check keys being checked

    @classmethod
    def start(
        cls, pkt: wire.SignedPacket, *, own_pubkey: bytes, config: q.QuorumConfig, now: int
    ) -> tuple[LiveRequest, list[q.Action]]:
        """A fresh machine for the request ``pkt``, and the actions it starts with."""
        body = pkt.body
        assert isinstance(body, wire.InferenceRequest)
        sf = body.security_frame
        params = q.SecurityParams(
            quorum=sf.quorum,
            max_time_ms=sf.max_time_ms,
            sec_distance=min(float(sf.sec_distance), 2.0),
            sec_percentage=float(sf.sec_percentage),
            accepted_models=tuple(body.accepted_models),
            commit_window_ms=sf.commit_window_ms,
        )
        machine, actions = q.QuorumMachine.start(
            request_id=pkt.packet_id,
            created_at_ms=pkt.ts_ms,
            params=params,
            own_pubkey=own_pubkey,
            now_ms=now,
            config=config,
        )
        return cls(packet=pkt, body=body, machine=machine), actions

    @classmethod
    def restore(cls, pkt: wire.SignedPacket, snapshot: bytes, own_model: str | None) -> LiveRequest:
        """The request ``pkt`` with its machine rebuilt from a stored snapshot."""
        body = pkt.body
        assert isinstance(body, wire.InferenceRequest)
        machine = q.QuorumMachine.from_dict(json.loads(snapshot))
        return cls(packet=pkt, body=body, machine=machine, own_model=own_model)
