"""Signed wire format: packet schemas, msgpack codec, signatures, limits, replay cache.

Every packet is a msgpack map ``{v, type, from, ts, nonce, body}`` signed with the
sender's ed25519 key; the frame on the wire is ``msgpack([payload, signature])``.
Decoding is ordered cheapest-first so hostile input costs as little as possible:
size, msgpack shape (with hard length limits), header, signature, clock, replay,
and only then the body schema. Every rejection is a :class:`WireError` with a
:class:`WireReason`, so callers can count rejections without catching anything else.

Protocol 2 (proof of inference) added: the security frame's optional
``commit_window_ms`` (default from ``consensus.windows.commit_window_ms``), model
identity (``accepted_models`` entries ``alias`` or ``alias@sha256:<hex>``, parsed by
``consensus.models``; commits and reveals name ``model`` and ``model_hash``; peer_info
advertises ``model_hashes``), the request seed rule (:func:`request_seed`) and the
answer rule / re-check summary in ``inference_quorum_computed``. Version 1 frames are
rejected as ``bad_version``: a v1 node would neither re-check nor honour the window.

Multi-turn chat (still protocol 2): ``inference_request`` may carry ``messages``, the
conversation *before* ``prompt`` (system prompts and earlier user/assistant turns), and
``stop`` strings. Both are optional and default to absent, so every v2 frame stays valid
and means what it meant (a bare prompt is one user message); only a node older than
this change refuses a frame that uses them (``schema``), so it simply does not take
part in that request. ``node.daemon.compute.engine_input`` turns them into the engine's
chat messages for generation and re-check alike.

Why this module is long: the wire format is one contract (schemas, codec, limits and
replay cache are checked together on every frame); splitting it would scatter the
rules a peer must follow across files that must always change together.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

import msgpack
import nacl.bindings
import nacl.exceptions
import nacl.signing
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from consensus import puzzle
from consensus.models import MODEL_HASH_PATTERN, AcceptedModels, check_alias
from consensus.windows import commit_window_ms
from node import clock

PROTOCOL_VERSION = 2
NONCE_BYTES = 16
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
COMMIT_BYTES = 32
HEADER_KEYS = frozenset({"v", "type", "from", "ts", "nonce", "body"})
PUZZLE_KEY = "pz"  # optional header field: the sender identity's puzzle nonce (consensus.puzzle)


class PacketType(StrEnum):
    INFERENCE_REQUEST = "inference_request"
    INFERENCE_COMMIT = "inference_commit"
    INFERENCE_REVEAL_REQUEST = "inference_reveal_request"
    INFERENCE_REVEAL = "inference_reveal"
    INFERENCE_REVEAL_REJECTED = "inference_reveal_rejected"
    INFERENCE_QUORUM_COMPUTED = "inference_quorum_computed"
    PEER_INFO = "peer_info"
    PEER_STATUS = "peer_status"


class WireReason(StrEnum):
    """Why a frame was rejected; stable strings, safe to use as metric labels."""

    TRUNCATED = "truncated"  # frame or payload ends before the msgpack data does
    MALFORMED = "malformed"  # not msgpack, or not the frame/header shape
    OVERSIZE = "oversize"  # frame larger than WireLimits.max_frame_bytes
    BAD_VERSION = "bad_version"  # header v is not PROTOCOL_VERSION
    UNKNOWN_TYPE = "unknown_type"  # header type is not a PacketType
    BAD_KEY = "bad_key"  # `from` is not a valid ed25519 public key
    # The signature does not verify for `from` over the payload. A tampered body, a
    # replaced `from` (key of another sender) and forged signature bytes all land
    # here: ed25519 does not let a verifier tell them apart (no key recovery).
    BAD_SIGNATURE = "bad_signature"
    # A node packet whose sender carries no puzzle nonce, or one that does not solve the
    # identity puzzle at the receiver's ``min_puzzle_difficulty`` (client requests are exempt).
    BAD_PUZZLE = "bad_puzzle"
    CLOCK_SKEW = "clock_skew"  # ts further than max_clock_skew_ms from now
    REPLAY = "replay"  # payload already accepted (SeenCache)
    SCHEMA = "schema"  # body misses fields, has extra ones, or has wrong types/ranges
    LIMIT = "limit"  # body is well-formed but over a configured WireLimits value


class WireError(Exception):
    """The only exception :func:`decode` raises; ``reason`` says which check failed."""

    def __init__(self, reason: WireReason, detail: str = "") -> None:
        self.reason = WireReason(reason)
        self.detail = detail
        super().__init__(f"{self.reason.value}: {detail}" if detail else self.reason.value)


class WireLimits(BaseModel):
    """Configurable bounds; the defaults keep any frame well under the 256 KiB limit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_frame_bytes: int = Field(256 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_prompt_chars: int = Field(32_000, ge=1, le=4_000_000)
    max_output_chars: int = Field(32_000, ge=1, le=4_000_000)
    max_tokens: int = Field(4096, ge=1, le=1_000_000)
    max_time_ms: int = Field(600_000, ge=1, le=86_400_000)
    max_accepted_models: int = Field(16, ge=1, le=1024)
    max_commits: int = Field(256, ge=1, le=65_536)
    max_name_chars: int = Field(256, ge=8, le=4096)
    max_reason_chars: int = Field(1024, ge=8, le=65_536)
    max_b_bytes: int = Field(1024, ge=1, le=65_536)
    max_clock_skew_ms: int = Field(60_000, ge=1, le=86_400_000)
    max_messages: int = Field(64, ge=0, le=1024)  # turns before the prompt in one request
    max_stop: int = Field(4, ge=0, le=64)  # stop strings in one request
    # Identity puzzle every non-request packet's sender must prove (0 = not checked).
    # The daemon sets it from ``Settings.puzzle_difficulty``.
    min_puzzle_difficulty: int = Field(0, ge=0, le=64)


DEFAULT_LIMITS = WireLimits()

_HEX = re.compile(r"^[0-9a-f]+$")
NodeId = Annotated[str, StringConstraints(min_length=64, max_length=64, pattern=r"^[0-9a-f]{64}$")]
RequestId = Annotated[str, StringConstraints(min_length=64, max_length=64, pattern=r"^[0-9a-f]{64}$")]
InferenceId = Annotated[str, StringConstraints(min_length=32, max_length=32, pattern=r"^[0-9a-f]{32}$")]
Hash32Hex = Annotated[str, StringConstraints(min_length=64, max_length=64, pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, StringConstraints(min_length=1)]
# Weights hash of a model, as computed by the engine at load: "sha256:<64 lowercase hex>".
ModelHash = Annotated[str, StringConstraints(min_length=71, max_length=71, pattern=MODEL_HASH_PATTERN)]
Commit = Annotated[bytes, Field(min_length=COMMIT_BYTES, max_length=COMMIT_BYTES)]
Float = Annotated[float, Field(allow_inf_nan=False)]


def _limits(info: ValidationInfo) -> WireLimits:
    """Limits come from the validation context so one schema serves every node config."""
    ctx = info.context
    if isinstance(ctx, dict) and isinstance(ctx.get("limits"), WireLimits):
        return ctx["limits"]
    return DEFAULT_LIMITS


def _check_len(value: Any, limit: int, what: str) -> Any:
    if len(value) > limit:
        raise ValueError(f"{what} has length {len(value)}, over the limit of {limit}")
    return value


class _Body(BaseModel):
    """Base of all bodies: immutable, strict types (msgpack gives exact types), no extras."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    packet_type: ClassVar[PacketType]

    @field_validator("*", mode="after")
    @classmethod
    def _names_bounded(cls, value: Any, info: ValidationInfo) -> Any:
        # Every free-form string except the big text fields is a "name" (model, device,
        # version, reason...): bound them all here instead of field by field.
        if isinstance(value, str) and info.field_name not in ("prompt", "output", "reason", "content"):
            _check_len(value, _limits(info).max_name_chars, info.field_name or "string")
        return value


class SecurityFrame(_Body):
    quorum: int = Field(ge=1)
    max_time_ms: int = Field(ge=1)
    sec_distance: Float = Field(ge=0.0)
    sec_percentage: Float = Field(gt=0.0, le=1.0)
    embedding_model: Name
    # Commits are accepted until the request's ts + this; None: the default of
    # consensus.windows.commit_window_ms (a quarter of max_time_ms, in [2 s, 60 s]).
    commit_window_ms: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _window_fits(self) -> SecurityFrame:
        commit_window_ms(self.max_time_ms, self.commit_window_ms)  # ValueError names the bound
        return self

    @property
    def effective_commit_window_ms(self) -> int:
        """The commit window this frame gives (explicit or default)."""
        return commit_window_ms(self.max_time_ms, self.commit_window_ms)

    @field_validator("quorum")
    @classmethod
    def _quorum_limit(cls, v: int, info: ValidationInfo) -> int:
        lim = _limits(info).max_commits
        if v > lim:
            raise ValueError(f"quorum {v} is over the limit of {lim}")
        return v

    @field_validator("max_time_ms")
    @classmethod
    def _time_limit(cls, v: int, info: ValidationInfo) -> int:
        lim = _limits(info).max_time_ms
        if v > lim:
            raise ValueError(f"max_time_ms {v} is over the limit of {lim}")
        return v


class ChatTurn(_Body):
    """One earlier message of a conversation: who said it and the text (no tool calls)."""

    role: Literal["system", "user", "assistant"]
    content: str


class InferenceRequest(_Body):
    packet_type: ClassVar[PacketType] = PacketType.INFERENCE_REQUEST
    prompt: str = Field(min_length=1)  # the last user message
    accepted_models: list[Name] = Field(min_length=1)
    temperature: Float = Field(ge=0.0, le=2.0)
    max_tokens: int = Field(ge=1)
    security_frame: SecurityFrame
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)  # None: see request_seed()
    # Optional (protocol 2 frames without them stay valid): the conversation before
    # `prompt`, and the strings that end generation. None and [] mean the same.
    OMIT_IF_NONE: ClassVar[tuple[str, ...]] = ("messages", "stop")
    messages: list[ChatTurn] | None = None
    stop: list[Annotated[str, StringConstraints(min_length=1)]] | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_limit(cls, v: str, info: ValidationInfo) -> str:
        return _check_len(v, _limits(info).max_prompt_chars, "prompt")

    @field_validator("messages")
    @classmethod
    def _messages_limit(cls, v: list[ChatTurn] | None, info: ValidationInfo) -> list[ChatTurn] | None:
        if v is None:
            return v
        lim = _limits(info)
        _check_len(v, lim.max_messages, "messages")
        # The same budget as a prompt: the whole conversation is what a node templates.
        total = sum(len(t.content) for t in v)
        if total > lim.max_prompt_chars:
            raise ValueError(f"messages have {total} characters, over the limit of {lim.max_prompt_chars}")
        return v

    @field_validator("stop")
    @classmethod
    def _stop_limit(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        return v if v is None else _check_len(v, _limits(info).max_stop, "stop")

    @model_validator(mode="after")
    def _conversation_fits(self, info: ValidationInfo) -> InferenceRequest:
        if self.messages:
            total = len(self.prompt) + sum(len(t.content) for t in self.messages)
            limit = _limits(info).max_prompt_chars
            if total > limit:
                raise ValueError(f"prompt and messages have {total} characters, over the limit of {limit}")
        return self

    def chat_messages(self) -> list[dict[str, str]]:
        """The whole conversation as chat messages, the prompt last (a bare prompt: one user turn)."""
        turns = [{"role": t.role, "content": t.content} for t in self.messages or ()]
        return [*turns, {"role": "user", "content": self.prompt}]

    @field_validator("accepted_models")
    @classmethod
    def _models_limit(cls, v: list[str], info: ValidationInfo) -> list[str]:
        lim = _limits(info)
        _check_len(v, lim.max_accepted_models, "accepted_models")
        for name in v:
            _check_len(name, lim.max_name_chars, "model name")
        AcceptedModels.parse(v)  # "alias" or "alias@sha256:<hex>", no repeats or ambiguity
        return v

    @field_validator("max_tokens")
    @classmethod
    def _tokens_limit(cls, v: int, info: ValidationInfo) -> int:
        lim = _limits(info).max_tokens
        if v > lim:
            raise ValueError(f"max_tokens {v} is over the limit of {lim}")
        return v


def _alias(v: str) -> str:
    return check_alias(v)


class InferenceCommit(_Body):
    packet_type: ClassVar[PacketType] = PacketType.INFERENCE_COMMIT
    request_id: RequestId
    inference_id: InferenceId
    model: Name  # the alias the request accepted (no "@")
    model_hash: ModelHash  # the weights the output came from
    commit: Commit
    # Committee sortition (consensus.sortition): the ticket inputs a verifier recomputes.
    # Optional, so a frame without them stays valid (it is then checked as round 0 at
    # the verifier's own view of the sender's capacity).
    sortition_round: int | None = Field(None, ge=0, le=64)
    capacity: int | None = Field(None, ge=0, le=1_000_000)

    _model_is_alias = field_validator("model")(_alias)


class CommitRef(_Body):
    node_id: NodeId
    inference_id: InferenceId
    commit: Commit


class InferenceRevealRequest(_Body):
    packet_type: ClassVar[PacketType] = PacketType.INFERENCE_REVEAL_REQUEST
    request_id: RequestId
    commits: list[CommitRef] = Field(min_length=1)

    @field_validator("commits")
    @classmethod
    def _commits_limit(cls, v: list[CommitRef], info: ValidationInfo) -> list[CommitRef]:
        return _check_len(v, _limits(info).max_commits, "commits")


class InferenceReveal(_Body):
    packet_type: ClassVar[PacketType] = PacketType.INFERENCE_REVEAL
    request_id: RequestId
    inference_id: InferenceId
    output: str
    b: bytes = Field(min_length=1)
    model: Name  # must equal the commit's (checked by the quorum machine)
    model_hash: ModelHash
    # The token ids the revealer's sampler drew (its text is their decoding): verifiers
    # re-check these exactly instead of re-tokenizing the text, which is ambiguous.
    # Optional: a reveal without them is re-checked from its text.
    output_tokens: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] | None = None

    _model_is_alias = field_validator("model")(_alias)

    @field_validator("output")
    @classmethod
    def _output_limit(cls, v: str, info: ValidationInfo) -> str:
        return _check_len(v, _limits(info).max_output_chars, "output")

    @field_validator("b")
    @classmethod
    def _b_limit(cls, v: bytes, info: ValidationInfo) -> bytes:
        return _check_len(v, _limits(info).max_b_bytes, "b")

    @field_validator("output_tokens")
    @classmethod
    def _tokens_limit(cls, v: list[int] | None, info: ValidationInfo) -> list[int] | None:
        # max_tokens generated tokens, plus the end-of-sequence token that ended them.
        return v if v is None else _check_len(v, _limits(info).max_tokens + 1, "output_tokens")


class InferenceRevealRejected(_Body):
    packet_type: ClassVar[PacketType] = PacketType.INFERENCE_REVEAL_REJECTED
    request_id: RequestId
    inference_id: InferenceId
    reason: str = Field(min_length=1)

    @field_validator("reason")
    @classmethod
    def _reason_limit(cls, v: str, info: ValidationInfo) -> str:
        return _check_len(v, _limits(info).max_reason_chars, "reason")


class InferenceQuorumComputed(_Body):
    packet_type: ClassVar[PacketType] = PacketType.INFERENCE_QUORUM_COMPUTED
    request_id: RequestId
    success: bool
    valid_inferences: list[InferenceId]
    joint_hash: Hash32Hex
    output: str
    from_node: NodeId
    reason: str | None = Field(default=None, min_length=1)
    # Protocol 2, informational (each node computes its own): the chosen member, the
    # answer rule (consensus.answer) and the re-check summary (consensus.recheck).
    representative: InferenceId | None = None
    answer_rule: Literal["max_log_likelihood", "medoid"] | None = None
    recheck: Literal["checked", "partial", "unavailable"] | None = None

    @field_validator("valid_inferences")
    @classmethod
    def _valid_limit(cls, v: list[str], info: ValidationInfo) -> list[str]:
        return _check_len(v, _limits(info).max_commits, "valid_inferences")

    @field_validator("output")
    @classmethod
    def _output_limit(cls, v: str, info: ValidationInfo) -> str:
        return _check_len(v, _limits(info).max_output_chars, "output")

    @field_validator("reason")
    @classmethod
    def _reason_limit(cls, v: str | None, info: ValidationInfo) -> str | None:
        return v if v is None else _check_len(v, _limits(info).max_reason_chars, "reason")

    @model_validator(mode="after")
    def _failure_has_reason(self) -> InferenceQuorumComputed:
        # A failed quorum without a reason is useless to clients and certificates.
        if not self.success and self.reason is None:
            raise ValueError("reason is required when success is false")
        return self


class PeerInfo(_Body):
    packet_type: ClassVar[PacketType] = PacketType.PEER_INFO
    models: list[Name]
    embedding_models: list[Name]
    workers: dict[Name, Annotated[int, Field(ge=0, le=1_000_000)]]
    device: Name
    version: Name
    api_url: str | None = None
    model_hashes: dict[Name, ModelHash] = Field(default_factory=dict)  # alias -> weights hash
    # Multiaddrs (each ending in /p2p/<peer id>) others can dial this node on; optional so
    # frames from nodes that predate it stay valid.
    addrs: list[Name] = Field(default_factory=list)

    @model_validator(mode="after")
    def _hashes_of_listed_models(self) -> PeerInfo:
        unknown = sorted(set(self.model_hashes) - set(self.models))
        if unknown:
            raise ValueError(f"model_hashes names models not in models: {unknown[:4]}")
        return self

    @field_validator("models", "embedding_models", "workers", "model_hashes", "addrs")
    @classmethod
    def _count_limit(cls, v: Any, info: ValidationInfo) -> Any:
        lim = _limits(info)
        _check_len(v, lim.max_accepted_models * 4, info.field_name or "list")
        for name in v:
            _check_len(name, lim.max_name_chars, "model name")
        return v


class PeerStatus(_Body):
    packet_type: ClassVar[PacketType] = PacketType.PEER_STATUS
    load: Float = Field(ge=0.0, le=1_000_000.0)
    queue_depth: int = Field(ge=0, le=2**31 - 1)
    tokens_per_s: Float = Field(ge=0.0, le=1e12)
    busy_workers: int = Field(default=0, ge=0, le=1_000_000)
    total_workers: int = Field(default=0, ge=0, le=1_000_000)
    uptime_s: Float = Field(default=0.0, ge=0.0)


Body = (
    InferenceRequest
    | InferenceCommit
    | InferenceRevealRequest
    | InferenceReveal
    | InferenceRevealRejected
    | InferenceQuorumComputed
    | PeerInfo
    | PeerStatus
)

BODY_MODELS: dict[PacketType, type[_Body]] = {
    m.packet_type: m
    for m in (
        InferenceRequest,
        InferenceCommit,
        InferenceRevealRequest,
        InferenceReveal,
        InferenceRevealRejected,
        InferenceQuorumComputed,
        PeerInfo,
        PeerStatus,
    )
}


@dataclass(frozen=True, slots=True)
class SignedPacket:
    """A verified packet; ``payload`` and ``signature`` are kept so it can be relayed
    unchanged or stored in a certificate and re-verified offline."""

    type: PacketType
    sender: bytes
    sender_id: str
    ts_ms: int
    nonce: bytes
    body: Body
    payload: bytes
    signature: bytes
    frame: bytes
    packet_id: str


class SeenCache:
    """Bounded replay cache keyed by packet id.

    An entry only needs to live until its packet's timestamp falls out of the
    clock-skew window (after that :func:`decode` rejects it as ``clock_skew``), so
    each entry expires at ``ts_ms + window_ms``. When full, the oldest insertions are
    evicted first; pair with per-peer rate limits so a flood cannot flush it.
    """

    def __init__(self, max_entries: int = 100_000, window_ms: int = DEFAULT_LIMITS.max_clock_skew_ms) -> None:
        if max_entries < 1 or window_ms < 1:
            raise ValueError("SeenCache needs max_entries >= 1 and window_ms >= 1")
        self.max_entries = max_entries
        self.window_ms = window_ms
        self._entries: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, packet_id: object) -> bool:
        return isinstance(packet_id, str) and self.seen(packet_id)

    def seen(self, packet_id: str, now_ms: int | None = None) -> bool:
        expiry = self._entries.get(packet_id)
        return expiry is not None and expiry >= (clock.now_ms() if now_ms is None else now_ms)

    def add(
        self, packet_id: str, ts_ms: int, now_ms: int | None = None, *, window_ms: int | None = None
    ) -> None:
        """Remember ``packet_id`` until ``ts_ms + window`` (the larger of the cache's window
        and ``window_ms``, so a cache built with a smaller window than the decoder's
        clock-skew limit still covers every packet the decoder can accept)."""
        now = clock.now_ms() if now_ms is None else now_ms
        self._entries[packet_id] = ts_ms + max(self.window_ms, window_ms or 0)
        self._entries.move_to_end(packet_id)
        self._prune(now)

    def check_and_add(self, packet_id: str, ts_ms: int, now_ms: int | None = None) -> bool:
        """Record the id; return True when it was already present (a replay)."""
        now = clock.now_ms() if now_ms is None else now_ms
        if self.seen(packet_id, now):
            return True
        self.add(packet_id, ts_ms, now)
        return False

    def _prune(self, now_ms: int) -> None:
        entries = self._entries
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
        # Expiries are roughly insertion-ordered; drop the expired head cheaply.
        while entries:
            first_id, expiry = next(iter(entries.items()))
            if expiry >= now_ms:
                break
            del entries[first_id]


# Puzzle nonces of the identities this process signs for (``register_puzzle``), so that
# every ``encode`` call site (gossip, outbox) carries the nonce without threading it
# through; and the (key, nonce, difficulty) triples already verified, so a receiver
# hashes once per identity, not once per packet.
_OWN_PUZZLES: dict[bytes, int] = {}
_VERIFIED_PUZZLES: OrderedDict[tuple[bytes, int, int], None] = OrderedDict()
_VERIFIED_PUZZLES_MAX = 65_536


def register_puzzle(public_key: bytes, nonce: int | None) -> None:
    """Make every frame this process signs with ``public_key`` carry ``nonce`` in the
    ``pz`` header field (``None`` stops it). Called once at daemon start."""
    if nonce is None:
        _OWN_PUZZLES.pop(bytes(public_key), None)
    else:
        _OWN_PUZZLES[bytes(public_key)] = int(nonce)


def _puzzle_ok(sender: bytes, nonce: Any, difficulty: int) -> bool:
    if not _is_int(nonce):
        return False
    key = (sender, nonce, difficulty)
    if key in _VERIFIED_PUZZLES:
        _VERIFIED_PUZZLES.move_to_end(key)
        return True
    if not puzzle.verify(sender, nonce, difficulty):
        return False
    _VERIFIED_PUZZLES[key] = None
    while len(_VERIFIED_PUZZLES) > _VERIFIED_PUZZLES_MAX:
        _VERIFIED_PUZZLES.popitem(last=False)
    return True


def _packet_type_of(body: BaseModel) -> PacketType:
    ptype = getattr(type(body), "packet_type", None)
    if not isinstance(ptype, PacketType) or BODY_MODELS.get(ptype) is not type(body):
        raise TypeError(f"{type(body).__name__} is not a packet body model")
    return ptype


def _body_dict(body: Body) -> dict[str, Any]:
    """The body as a msgpack map. Optional fields added after protocol 2 shipped
    (``OMIT_IF_NONE``) are left out when unset, so such frames stay byte-for-byte
    what an older protocol-2 node accepts."""
    data = body.model_dump(mode="python")
    for key in getattr(type(body), "OMIT_IF_NONE", ()):
        if data.get(key) is None:
            data.pop(key, None)
    return data


def encode(
    body: Body,
    signing_key: nacl.signing.SigningKey,
    *,
    ts_ms: int | None = None,
    nonce: bytes | None = None,
    limits: WireLimits = DEFAULT_LIMITS,
    puzzle_nonce: int | None = None,
) -> bytes:
    """Sign ``body`` as a packet from ``signing_key`` and return the wire frame.

    ``puzzle_nonce`` (default: the one registered for this key, ``register_puzzle``)
    goes into the optional ``pz`` header field, inside the signature.

    Raises ``WireError(OVERSIZE)`` when the frame would be rejected by receivers using
    ``limits``: better to fail at the sender than to be dropped silently by everyone.
    """
    ptype = _packet_type_of(body)
    if nonce is None:
        nonce = os.urandom(NONCE_BYTES)
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")
    packet = {
        "v": PROTOCOL_VERSION,
        "type": ptype.value,
        "from": bytes(signing_key.verify_key),
        "ts": clock.now_ms() if ts_ms is None else int(ts_ms),
        "nonce": bytes(nonce),
        "body": _body_dict(body),
    }
    if puzzle_nonce is None:
        puzzle_nonce = _OWN_PUZZLES.get(bytes(signing_key.verify_key))
    if puzzle_nonce is not None:
        packet[PUZZLE_KEY] = int(puzzle_nonce)
    try:
        payload = msgpack.packb(packet, use_bin_type=True)
    except (ValueError, OverflowError, TypeError) as exc:  # e.g. a lone surrogate in a str
        raise WireError(WireReason.SCHEMA, f"{ptype.value} body cannot be encoded: {exc}") from None
    signature = signing_key.sign(payload).signature
    frame = msgpack.packb([payload, signature], use_bin_type=True)
    if len(frame) > limits.max_frame_bytes:
        raise WireError(
            WireReason.OVERSIZE, f"frame is {len(frame)} bytes, limit is {limits.max_frame_bytes}"
        )
    return frame


def _unpack(data: bytes, *, limits: WireLimits, what: str) -> Any:
    # Explicit element limits keep a hostile frame from allocating much; msgpack also
    # caps every declared length at len(data), so nothing can claim more than it carries.
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=limits.max_frame_bytes,
            max_str_len=limits.max_frame_bytes,
            # Twice the schema's largest list/map, so a slightly-too-long list is reported
            # by the schema as LIMIT while an absurd one never gets allocated. The largest
            # list is a reveal's output_tokens (max_tokens + 1 ids).
            max_array_len=2 * max(limits.max_commits, limits.max_accepted_models * 4, limits.max_tokens + 1) + 16,
            max_map_len=2 * limits.max_accepted_models * 4 + 32,
            max_ext_len=0,
        )
    except ValueError as exc:  # msgpack's errors (incl. UnicodeDecodeError) are ValueErrors
        if "incomplete input" in str(exc):
            raise WireError(WireReason.TRUNCATED, f"{what} ends early") from None
        raise WireError(WireReason.MALFORMED, f"{what} is not valid msgpack: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - anything else from a parser is still bad input
        raise WireError(WireReason.MALFORMED, f"{what} is not valid msgpack: {type(exc).__name__}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def decode(
    frame: bytes,
    *,
    now_ms: int | None = None,
    limits: WireLimits = DEFAULT_LIMITS,
    seen: SeenCache | None = None,
    check_time: bool = True,
) -> SignedPacket:
    """Verify and parse one frame; raises only :class:`WireError`.

    With ``seen`` given, a packet is recorded there only when it passes every check,
    and an already-recorded one is rejected as ``replay``. ``check_time=False`` skips
    the clock-skew check, for re-verifying stored packets and certificates offline.
    """
    try:
        return _decode(frame, now_ms=now_ms, limits=limits, seen=seen, check_time=check_time)
    except WireError:
        raise
    except Exception as exc:  # noqa: BLE001 - the contract: nothing but WireError escapes
        raise WireError(WireReason.MALFORMED, f"unexpected {type(exc).__name__}") from None


def _decode(
    frame: bytes, *, now_ms: int | None, limits: WireLimits, seen: SeenCache | None, check_time: bool
) -> SignedPacket:
    if not isinstance(frame, bytes | bytearray | memoryview):
        raise WireError(WireReason.MALFORMED, f"frame must be bytes, got {type(frame).__name__}")
    frame = bytes(frame)
    if len(frame) > limits.max_frame_bytes:
        raise WireError(
            WireReason.OVERSIZE, f"frame is {len(frame)} bytes, limit is {limits.max_frame_bytes}"
        )
    if not frame:
        raise WireError(WireReason.TRUNCATED, "empty frame")

    outer = _unpack(frame, limits=limits, what="frame")
    if not (isinstance(outer, list) and len(outer) == 2 and isinstance(outer[0], bytes)):
        raise WireError(WireReason.MALFORMED, "frame must be [payload bytes, signature bytes]")
    payload, signature = outer
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        raise WireError(WireReason.BAD_SIGNATURE, f"signature must be {SIGNATURE_BYTES} bytes")

    packet = _unpack(payload, limits=limits, what="payload")
    if not isinstance(packet, dict):
        raise WireError(WireReason.MALFORMED, "payload must be a msgpack map")
    version = packet.get("v")
    if not _is_int(version) or version != PROTOCOL_VERSION:
        raise WireError(WireReason.BAD_VERSION, f"version {version!r} is not {PROTOCOL_VERSION}")
    keys = set(packet)
    if keys != HEADER_KEYS and keys != HEADER_KEYS | {PUZZLE_KEY}:
        raise WireError(WireReason.MALFORMED, f"packet keys must be {sorted(HEADER_KEYS)} (+ optional pz)")
    try:
        ptype = PacketType(packet["type"])
    except (ValueError, TypeError):
        raise WireError(WireReason.UNKNOWN_TYPE, f"unknown packet type {packet['type']!r:.80}") from None
    sender, ts, nonce, raw_body = packet["from"], packet["ts"], packet["nonce"], packet["body"]
    if not isinstance(sender, bytes) or len(sender) != PUBLIC_KEY_BYTES:
        raise WireError(WireReason.MALFORMED, f"from must be {PUBLIC_KEY_BYTES} bytes")
    if not _is_int(ts) or ts < 0:
        raise WireError(WireReason.MALFORMED, "ts must be a non-negative integer (unix ms)")
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise WireError(WireReason.MALFORMED, f"nonce must be {NONCE_BYTES} bytes")
    if not isinstance(raw_body, dict):
        raise WireError(WireReason.MALFORMED, "body must be a map")

    # The identity puzzle before the signature: one cached SHA-256 is cheaper than an
    # ed25519 verification, so a packet from an unpaid identity costs the least work.
    # Client requests are exempt (clients are not committee members).
    difficulty = limits.min_puzzle_difficulty
    if difficulty and ptype is not PacketType.INFERENCE_REQUEST:
        if PUZZLE_KEY not in packet:
            raise WireError(WireReason.BAD_PUZZLE, "node packet carries no identity puzzle (pz)")
        if not _puzzle_ok(sender, packet[PUZZLE_KEY], difficulty):
            raise WireError(
                WireReason.BAD_PUZZLE, f"pz does not solve the identity puzzle at difficulty {difficulty}"
            )
    if not nacl.bindings.crypto_core_ed25519_is_valid_point(sender):
        raise WireError(WireReason.BAD_KEY, "from is not a valid ed25519 public key")
    try:
        nacl.signing.VerifyKey(sender).verify(payload, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
        raise WireError(WireReason.BAD_SIGNATURE, "signature does not match sender and payload") from None

    now = clock.now_ms() if now_ms is None else now_ms
    if check_time and abs(ts - now) > limits.max_clock_skew_ms:
        raise WireError(
            WireReason.CLOCK_SKEW, f"ts is {ts - now} ms from now, window is ±{limits.max_clock_skew_ms} ms"
        )
    packet_id = hashlib.sha256(payload).hexdigest()
    if seen is not None and seen.seen(packet_id, now):
        raise WireError(WireReason.REPLAY, f"packet {packet_id[:16]} already seen")

    body = _validate_body(ptype, raw_body, limits)
    if seen is not None:
        seen.add(packet_id, ts, now, window_ms=limits.max_clock_skew_ms)
    return SignedPacket(
        type=ptype,
        sender=sender,
        sender_id=sender.hex(),
        ts_ms=ts,
        nonce=nonce,
        body=body,
        payload=payload,
        signature=signature,
        frame=frame,
        packet_id=packet_id,
    )


_LIMIT_MARKER = "over the limit of"


def _validate_body(ptype: PacketType, raw_body: dict[str, Any], limits: WireLimits) -> Body:
    model = BODY_MODELS[ptype]
    try:
        return model.model_validate(raw_body, context={"limits": limits})  # type: ignore[return-value]
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or ptype.value}: {e['msg']}" for e in errors[:5])
        reason = WireReason.LIMIT if all(_LIMIT_MARKER in e["msg"] for e in errors) else WireReason.SCHEMA
        raise WireError(reason, f"{ptype.value} body: {detail}") from None


def validate_body(
    body: dict[str, Any], packet_type: PacketType | str, limits: WireLimits = DEFAULT_LIMITS
) -> Body:
    """Validate an unsigned body dict (e.g. from the HTTP API) the way :func:`decode` would."""
    try:
        ptype = PacketType(packet_type)
    except ValueError:
        raise WireError(WireReason.UNKNOWN_TYPE, f"unknown packet type {packet_type!r:.80}") from None
    if not isinstance(body, dict):
        raise WireError(WireReason.MALFORMED, "body must be a map")
    return _validate_body(ptype, body, limits)


def request_id(packet: SignedPacket) -> str:
    """The id of a request = its packet id (hex sha256 of the signed payload)."""
    if packet.type is not PacketType.INFERENCE_REQUEST:
        raise ValueError(f"request_id needs an inference_request packet, got {packet.type.value}")
    return packet.packet_id


SEED_MAX = 2**63 - 1


def request_seed(body: InferenceRequest, req_id: str) -> int:
    """The sampling seed of a request: ``body.seed`` when the client set it, else the
    first 8 bytes of the request id (big-endian) masked to 63 bits.

    Derived, not chosen by any node: every node computes the same seed, so honest nodes
    sampling at T > 0 draw the same text and each can re-check the others' draws."""
    if body.seed is not None:
        return body.seed
    if not (isinstance(req_id, str) and len(req_id) == 64 and _HEX.match(req_id)):
        raise ValueError("request_id must be 64 lowercase hex characters")
    return int.from_bytes(bytes.fromhex(req_id)[:8], "big") & SEED_MAX


def inference_id(req_id: str, public_key: bytes) -> str:
    """One inference id per (request, node): sha256(request_id ascii || pubkey), 32 hex chars."""
    if not (isinstance(req_id, str) and len(req_id) == 64 and _HEX.match(req_id)):
        raise ValueError("request_id must be 64 lowercase hex characters")
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise ValueError(f"public key must be {PUBLIC_KEY_BYTES} bytes")
    return hashlib.sha256(req_id.encode("ascii") + bytes(public_key)).hexdigest()[:32]


__all__ = [
    "BODY_MODELS",
    "ChatTurn",
    "COMMIT_BYTES",
    "DEFAULT_LIMITS",
    "SEED_MAX",
    "NONCE_BYTES",
    "PROTOCOL_VERSION",
    "PUZZLE_KEY",
    "register_puzzle",
    "Body",
    "CommitRef",
    "InferenceCommit",
    "InferenceQuorumComputed",
    "InferenceRequest",
    "InferenceReveal",
    "InferenceRevealRejected",
    "InferenceRevealRequest",
    "PacketType",
    "PeerInfo",
    "PeerStatus",
    "SecurityFrame",
    "SeenCache",
    "SignedPacket",
    "WireError",
    "WireLimits",
    "WireReason",
    "decode",
    "encode",
    "inference_id",
    "request_id",
    "request_seed",
    "validate_body",
]
