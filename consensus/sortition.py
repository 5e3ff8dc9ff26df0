"""Committee sortition: which nodes run a request, recomputable by anyone.

Without it every node that holds the model runs every request, so a network of N
nodes does N times the work of one and floods N commits and N reveals to everyone.
With it, only a small committee of expected size ``quorum * committee_factor`` runs
each request; the rest of the network only relays, so capacity grows with N.

The rule (Algorand-style self-selection, without a VRF)
- Ticket: ``u = H("rakis-sortition-v1" || request_id || public key)`` read as a
  uniform in [0, 1). Hashing the request id means nobody knows the committee before
  the request exists; hashing the public key means anyone can recompute any node's
  ticket from public data (no secret, so no VRF is needed: the committee is not
  secret once the request exists, it only cannot be known or chosen *before* it).
- Weight: ``w = credited capacity * standing`` (``weight``, ``consensus.standing``).
  Capacity is what the node advertises (workers for the model), believed only in
  proportion to standing and never above ``capacity_cap``; standing makes fresh
  identities light.
- Threshold: a node is selected in round ``r`` when ``u < p(w, r)`` with
  ``p = min(1, scale * widen_factor**r * w)``. ``scale`` is found by *water-filling*
  over the weights of the eligible peers the node knows (``base_scale``): it solves
  ``sum_i min(1, scale * w_i) = target`` exactly, so the expected committee size is
  the target even when a few heavy nodes are capped at probability 1 (a plain
  ``target * w / sum(w)`` would undershoot then). From ``max_rounds`` on, every
  eligible node is selected: the old run-everywhere behaviour is the last resort.
- Rounds are nested (a round's committee contains every earlier one) and a pure
  function of (request, round, view). The first round is the smallest one whose
  committee, in the node's own view, has at least ``quorum + spare_members``
  members (``first_round``), so an unlucky draw of tickets does not wait a round deadline.
  Each later round opens ``round_ms`` after the previous one if fewer than
  ``quorum`` committee commits were seen by then (offline members).

The slack rule (verifiers)
Views of N and of standing differ between nodes. A verifier accepts a commit that
claims round ``r`` when (a) its ticket passes round ``r`` under the verifier's own
view *times* ``slack`` (default 1.5: the committer may know as little as 1/1.5 of the
weight the verifier knows), and (b) ``r`` is not later than the verifier's own first
round plus one, plus the rounds that time has opened (``max_round_at``). The price of
the slack is that a cheater who claims selection it does not have gains up to
``slack`` times its fair weight; honest nodes select themselves at 1x.

Known limit: the request id is chosen by the client (it hashes the signed request),
so a client colluding with an attacker can grind request ids until the attacker's
keys fill the committee. The network cannot stop a client capturing *its own*
request; certificates therefore prove "these members agreed", not "a random
committee agreed". See docs/scale.md.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "TICKET_DOMAIN",
    "CommitVerdict",
    "CommitteeView",
    "SortitionConfig",
    "base_scale",
    "check_commit",
    "committee_target",
    "first_round",
    "max_round_at",
    "selection_probability",
    "ticket",
    "weight",
]

TICKET_DOMAIN = b"rakis-sortition-v1"
_TWO_64 = float(1 << 64)


@dataclass(frozen=True, slots=True)
class SortitionConfig:
    """Sortition knobs; the daemon fills them from its settings."""

    committee_factor: float = 1.5
    min_committee: float = 1.0  # bounds on the expected committee size
    max_committee: float = 64.0
    widen_factor: float = 2.0
    max_rounds: int = 8  # from this round on, every eligible node is selected
    round_ms: int = 20_000
    slack: float = 1.5
    capacity_cap: float = 8.0
    spare_members: int = 1  # the first round needs quorum + spare members (one may be faulty)

    def __post_init__(self) -> None:
        if not self.committee_factor >= 1.0:
            raise ValueError(f"committee_factor must be >= 1, got {self.committee_factor!r}")
        if not 1.0 <= self.min_committee <= self.max_committee:
            raise ValueError("need 1 <= min_committee <= max_committee")
        if not self.widen_factor > 1.0:
            raise ValueError("widen_factor must be > 1")
        if self.max_rounds < 1 or self.round_ms <= 0:
            raise ValueError("max_rounds must be >= 1 and round_ms > 0")
        if not self.slack >= 1.0:
            raise ValueError("slack must be >= 1")
        if self.spare_members < 0:
            raise ValueError("spare_members must be >= 0")
        if not self.capacity_cap > 0.0:
            raise ValueError("capacity_cap must be > 0")


def ticket(request_id: str, public_key: bytes) -> float:
    """The node's uniform ticket in [0, 1) for this request (first 8 hash bytes / 2**64)."""
    if len(public_key) != 32:
        raise ValueError("public_key must be 32 raw bytes")
    h = hashlib.sha256(TICKET_DOMAIN + request_id.encode("ascii") + bytes(public_key)).digest()
    return int.from_bytes(h[:8], "big") / _TWO_64


def weight(capacity: float, standing: float, config: SortitionConfig = SortitionConfig()) -> float:
    """Sortition weight: credited capacity times the standing multiplier.

    Capacity is a claim nobody can check before the work is done, so it is believed in
    proportion to standing: ``credited = min(capacity, 1 + (capacity_cap - 1) * standing)``.
    A fresh identity (standing ~0.05) is credited about one worker whatever it claims;
    an established one up to the cap. Without this, a burst of fresh identities that
    all claim the cap would win back most of what their low standing cost them.
    """
    if not (capacity >= 0.0 and 0.0 <= standing <= 1.0) or math.isinf(capacity):
        raise ValueError(
            f"capacity must be finite and >= 0 and standing in [0, 1], got {capacity!r}, {standing!r}"
        )
    credited = min(float(capacity), 1.0 + (config.capacity_cap - 1.0) * float(standing))
    return credited * float(standing)


def committee_target(quorum: int, config: SortitionConfig = SortitionConfig()) -> float:
    """Expected committee size: ``quorum * committee_factor`` within the configured bounds,
    and never below the quorum itself."""
    if quorum < 1:
        raise ValueError("quorum must be >= 1")
    t = quorum * config.committee_factor
    return max(float(quorum), min(config.max_committee, max(config.min_committee, t)))


def base_scale(weights: Iterable[float], target: float) -> float:
    """The round-0 scale ``s`` with ``sum(min(1, s * w)) == target`` (water-filling).

    Returns ``inf`` when the target is at least the number of positive weights (then
    everybody is selected). Weights of 0 never count.
    """
    w = np.asarray([x for x in weights if x > 0.0], dtype=np.float64)
    if target <= 0.0:
        raise ValueError("target must be > 0")
    if len(w) == 0 or target >= len(w):
        return math.inf
    w = np.sort(w)[::-1]
    tail = np.cumsum(w[::-1])[::-1]  # tail[j] = sum(w[j:])
    for j in range(len(w)):  # the j heaviest are capped at probability 1
        s = (target - j) / tail[j]
        if s * w[j] <= 1.0 and (j == 0 or s * w[j - 1] >= 1.0):
            return float(s)
    return math.inf  # unreachable for target < len(w)


def selection_probability(
    w: float, scale: float, round_: int, config: SortitionConfig = SortitionConfig()
) -> float:
    """``min(1, scale * widen**round * w)``; 1 for every positive weight from ``max_rounds`` on."""
    if round_ < 0:
        raise ValueError("round must be >= 0")
    if w <= 0.0:
        return 0.0
    if round_ >= config.max_rounds or math.isinf(scale):
        return 1.0
    return min(1.0, scale * config.widen_factor**round_ * w)


@dataclass(frozen=True, slots=True)
class CommitteeView:
    """One node's view of the eligible peers serving a model: node id -> weight.

    Built by the daemon from ``peer_info`` (capacity) and its own standing records;
    it must include the node itself when it serves the model.
    """

    weights: Mapping[str, float]
    target: float
    config: SortitionConfig = SortitionConfig()
    scale: float = field(init=False)  # computed once; do not mutate ``weights`` afterwards

    def __post_init__(self) -> None:
        if any(not (w >= 0.0) or math.isinf(w) for w in self.weights.values()):
            raise ValueError("weights must be finite and >= 0")
        object.__setattr__(self, "scale", base_scale(self.weights.values(), self.target))

    def probability(self, node_id: str, round_: int, *, scale: float | None = None) -> float:
        s = self.scale if scale is None else scale
        return selection_probability(self.weights.get(node_id, 0.0), s, round_, self.config)

    def members(self, request_id: str, round_: int) -> list[str]:
        """The round's committee as this view sees it (sorted node ids)."""
        s = self.scale
        out = []
        for node_id in sorted(self.weights):
            p = selection_probability(self.weights[node_id], s, round_, self.config)
            if p > 0.0 and ticket(request_id, bytes.fromhex(node_id)) < p:
                out.append(node_id)
        return out

    def selected(self, request_id: str, node_id: str, round_: int) -> bool:
        """Self-selection: is ``node_id`` in the round's committee (no slack)?"""
        p = self.probability(node_id, round_)
        return p > 0.0 and ticket(request_id, bytes.fromhex(node_id)) < p


def first_round(view: CommitteeView, request_id: str, quorum: int) -> int:
    """The smallest round whose committee in this view has ``quorum + spare_members``.

    Tickets are public, so every node can count the committee at once and skip rounds
    that could never reach the quorum instead of waiting out their deadlines. The spare
    member means one faulty or offline member cannot by itself leave the committee
    short of a quorum.
    """
    needed = quorum + view.config.spare_members
    s = view.scale
    tickets = [(ticket(request_id, bytes.fromhex(n)), w) for n, w in view.weights.items() if w > 0.0]
    for r in range(view.config.max_rounds + 1):
        count = sum(1 for u, w in tickets if u < selection_probability(w, s, r, view.config))
        if count >= needed:
            return r
    return view.config.max_rounds


def max_round_at(
    first: int, created_at_ms: int, now_ms: int, config: SortitionConfig = SortitionConfig()
) -> int:
    """The latest round a verifier accepts at ``now_ms``: its own first round plus one
    (slack for a differing view), plus one per ``round_ms`` elapsed since the request."""
    elapsed = max(0, now_ms - created_at_ms) // config.round_ms
    return min(config.max_rounds, first + 1 + int(elapsed))


@dataclass(frozen=True, slots=True)
class CommitVerdict:
    """Why a verifier counts or ignores a commit (``reason`` is a short stable word)."""

    accepted: bool
    reason: str  # in_committee | round_too_early | not_in_committee | bad_claim
    ticket: float
    probability: float


def check_commit(
    view: CommitteeView,
    request_id: str,
    public_key: bytes,
    *,
    claimed_round: int,
    claimed_capacity: float,
    standing: float,
    max_round: int,
) -> CommitVerdict:
    """Verifier side: count this commit only if its sender is in the committee.

    The weight is the verifier's own: capacity = the smaller of the claim and the
    verifier's record (the claim alone for a peer it has not heard of), standing =
    the verifier's own standing of the sender. ``max_round`` comes from
    ``max_round_at``. The ticket must pass ``slack`` times the round's probability.
    """
    cfg = view.config
    if claimed_round < 0 or not claimed_capacity >= 0.0 or math.isinf(claimed_capacity):
        return CommitVerdict(False, "bad_claim", math.nan, 0.0)
    u = ticket(request_id, public_key)
    if claimed_round > max_round:
        return CommitVerdict(False, "round_too_early", u, 0.0)
    node_id = bytes(public_key).hex()
    known = view.weights.get(node_id)
    w = weight(claimed_capacity, standing, cfg)
    if known is not None:
        w = min(w, known) if known > 0.0 else 0.0
    p = selection_probability(w, view.scale, claimed_round, cfg)
    p_slack = 1.0 if p >= 1.0 else min(1.0, p * cfg.slack)
    if p_slack > 0.0 and u < p_slack:
        return CommitVerdict(True, "in_committee", u, p_slack)
    return CommitVerdict(False, "not_in_committee", u, p_slack)
