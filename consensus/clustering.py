"""Embedding clustering: does a large enough group of outputs agree?

The verifier passes its *own* embeddings of the revealed outputs (never the ones a
peer sent), keyed by inference id. Each output is a candidate centre; its cluster is
every output within ``sec_distance`` (cosine distance) of it. Consensus holds when at
least ``quorum`` embeddings are present and the largest cluster has at least
``ceil(sec_percentage * quorum)`` members.

Determinism matters more than elegance here: every honest verifier must reach the
same members from the same outputs whatever order the reveals arrived in, so inputs
are sorted by inference id first and ties between equally large clusters are broken
by (smaller total distance to the centre, then the sorted member ids, then the centre
id). The pairwise distances are one matrix product, so 1,000 reveals take milliseconds.

Which member's output is returned is not decided here but in ``consensus.answer``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_SEC_DISTANCE",
    "ConsensusOutcome",
    "find_consensus",
    "joint_hash",
    "needed_members",
]

# Default distance for new security frames; chosen from measured distances, see
# docs/consensus.md (honest-vs-honest p95 0.52, nearest adversarial 0.65+).
DEFAULT_SEC_DISTANCE = 0.5

NOT_ENOUGH_VALID_REVEALS = "not_enough_valid_reveals"
NO_CLUSTER_OF_NEEDED_SIZE = "no_cluster_of_needed_size"


@dataclass(frozen=True, slots=True)
class ConsensusOutcome:
    """Result of one clustering run.

    ``members`` are the accepted inference ids, sorted; on failure they are the best
    cluster found (possibly empty), useful for explaining the failure.
    """

    success: bool
    members: tuple[str, ...]
    reason: str | None
    needed: int = 0
    considered: int = 0


def needed_members(quorum: int, sec_percentage: float) -> int:
    """``ceil(sec_percentage * quorum)``, robust to float noise (0.8 * 5 is 4, not 5)."""
    _check_params(quorum, 0.0, sec_percentage)
    return max(1, math.ceil(round(sec_percentage * quorum, 9)))


def _check_params(quorum: int, sec_distance: float, sec_percentage: float) -> None:
    if isinstance(quorum, bool) or not isinstance(quorum, int) or quorum < 1:
        raise ValueError(f"quorum must be an integer >= 1, got {quorum!r}")
    if not (isinstance(sec_distance, int | float) and 0.0 <= sec_distance <= 2.0):
        raise ValueError(f"sec_distance must be in [0, 2], got {sec_distance!r}")
    if not (isinstance(sec_percentage, int | float) and 0.0 < sec_percentage <= 1.0):
        raise ValueError(f"sec_percentage must be in (0, 1], got {sec_percentage!r}")


def _stack(embeddings: Mapping[str, np.ndarray], ids: list[str]) -> np.ndarray:
    rows = [np.asarray(embeddings[i], dtype=np.float64) for i in ids]
    dims = {r.shape for r in rows}
    if len(dims) != 1 or rows[0].ndim != 1:
        raise ValueError(f"embeddings must be 1-D and of one length, got shapes {sorted(dims)}")
    mat = np.stack(rows)
    if not np.all(np.isfinite(mat)):
        raise ValueError("embeddings contain NaN or infinite values")
    return mat


def cosine_distances(mat: np.ndarray) -> np.ndarray:
    """Pairwise ``1 - cos`` for the rows of ``mat``; a zero row is at distance 1 from all."""
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    unit = np.divide(mat, norms, out=np.zeros_like(mat), where=norms > 0)
    dist = 1.0 - unit @ unit.T
    np.clip(dist, 0.0, 2.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    return dist


def find_consensus(
    embeddings: Mapping[str, np.ndarray],
    *,
    quorum: int,
    sec_distance: float,
    sec_percentage: float,
) -> ConsensusOutcome:
    """Cluster the verifier's own embeddings of valid reveals (see module docstring)."""
    _check_params(quorum, sec_distance, sec_percentage)
    needed = needed_members(quorum, sec_percentage)
    ids = sorted(embeddings)
    n = len(ids)
    if n < quorum or n == 0:
        return ConsensusOutcome(False, (), NOT_ENOUGH_VALID_REVEALS, needed, n)
    dist = cosine_distances(_stack(embeddings, ids))
    within = dist <= sec_distance + 1e-12
    counts = within.sum(axis=1)
    best = int(counts.max())
    candidates = np.flatnonzero(counts == best)
    if len(candidates) > 1:
        spread = np.round(np.where(within[candidates], dist[candidates], 0.0).sum(axis=1), 9)
        candidates = candidates[spread == spread.min()]
    if len(candidates) > 1:
        centre = min(
            (int(c) for c in candidates),
            key=lambda c: (tuple(ids[j] for j in np.flatnonzero(within[c])), ids[c]),
        )
    else:
        centre = int(candidates[0])
    members = tuple(ids[j] for j in np.flatnonzero(within[centre]))
    if best < needed:
        return ConsensusOutcome(False, members, NO_CLUSTER_OF_NEEDED_SIZE, needed, n)
    return ConsensusOutcome(True, members, None, needed, n)


def _sorted_commits(member_commits: Mapping[str, bytes]) -> list[tuple[bytes, str]]:
    if not member_commits:
        raise ValueError("member_commits must not be empty")
    return sorted((bytes(c), i) for i, c in member_commits.items())


def joint_hash(request_id: str, member_commits: Mapping[str, bytes]) -> str:
    """Hex ``sha256(request_id || sorted member commits)``: names the agreed cluster."""
    h = hashlib.sha256(request_id.encode("ascii"))
    for commit, _ in _sorted_commits(member_commits):
        h.update(commit)
    return h.hexdigest()
