"""Property tests: round trips for every packet type, and hostile bytes only ever raise WireError.

Example counts add up to well over 2,000 (round trips 8 x 60, random bytes 1,000,
mutations 1,000, structured garbage 300) and run in a few seconds.
"""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from node import wire
from node.wire import WireError
from tests.node.builders import now_ms, sample_bodies

KEY = SigningKey(b"\x33" * 32)
FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

hex64 = st.binary(min_size=32, max_size=32).map(bytes.hex)
hex32 = st.binary(min_size=16, max_size=16).map(lambda b: b.hex())
names = st.text(min_size=1, max_size=40)
texts = st.text(max_size=300)
finite = {"allow_nan": False, "allow_infinity": False}

aliases = names.filter(lambda s: "@" not in s and s == s.strip())
model_hashes = st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex())
# accepted_models: distinct aliases, each bare or pinned to one or two weights hashes
accepted_models = st.lists(aliases, min_size=1, max_size=8, unique=True).flatmap(
    lambda al: st.tuples(*(st.lists(model_hashes, max_size=2, unique=True) for _ in al)).map(
        lambda pins: [
            a if not ps else f"{a}@{h}" for a, ps in zip(al, pins, strict=True) for h in (ps or [None])
        ]
    )
)
security_frames = st.integers(1, 600_000).flatmap(
    lambda max_time: st.builds(
        wire.SecurityFrame,
        quorum=st.integers(1, 256),
        max_time_ms=st.just(max_time),
        sec_distance=st.floats(0, 2, **finite),
        sec_percentage=st.floats(0, 1, exclude_min=True, **finite),
        embedding_model=names,
        commit_window_ms=st.none() | st.integers(1, max_time),
    )
)
peer_models = st.lists(names, max_size=8, unique=True).flatmap(
    lambda ms: st.tuples(
        st.just(ms), st.dictionaries(st.sampled_from(ms), model_hashes) if ms else st.just({})
    )
)
commit_refs = st.builds(
    wire.CommitRef, node_id=hex64, inference_id=hex32, commit=st.binary(min_size=32, max_size=32)
)

BODIES: dict[wire.PacketType, st.SearchStrategy[wire._Body]] = {
    wire.PacketType.INFERENCE_REQUEST: st.builds(
        wire.InferenceRequest,
        prompt=st.text(min_size=1, max_size=300),
        accepted_models=accepted_models,
        temperature=st.floats(0, 2, **finite),
        max_tokens=st.integers(1, 4096),
        security_frame=security_frames,
        seed=st.none() | st.integers(0, 2**63 - 1),
    ),
    wire.PacketType.INFERENCE_COMMIT: st.builds(
        wire.InferenceCommit,
        request_id=hex64,
        inference_id=hex32,
        model=aliases,
        model_hash=model_hashes,
        commit=st.binary(min_size=32, max_size=32),
    ),
    wire.PacketType.INFERENCE_REVEAL_REQUEST: st.builds(
        wire.InferenceRevealRequest, request_id=hex64, commits=st.lists(commit_refs, min_size=1, max_size=20)
    ),
    wire.PacketType.INFERENCE_REVEAL: st.builds(
        wire.InferenceReveal,
        request_id=hex64,
        inference_id=hex32,
        output=texts,
        b=st.binary(min_size=1, max_size=1024),
        model=aliases,
        model_hash=model_hashes,
    ),
    wire.PacketType.INFERENCE_REVEAL_REJECTED: st.builds(
        wire.InferenceRevealRejected,
        request_id=hex64,
        inference_id=hex32,
        reason=st.text(min_size=1, max_size=100),
    ),
    wire.PacketType.INFERENCE_QUORUM_COMPUTED: st.builds(
        wire.InferenceQuorumComputed,
        request_id=hex64,
        success=st.just(True),
        valid_inferences=st.lists(hex32, max_size=20),
        joint_hash=hex64,
        output=texts,
        from_node=hex64,
        reason=st.none() | st.text(min_size=1, max_size=50),
        representative=st.none() | hex32,
        answer_rule=st.none() | st.sampled_from(["max_log_likelihood", "medoid"]),
        recheck=st.none() | st.sampled_from(["checked", "partial", "unavailable"]),
    )
    | st.builds(
        wire.InferenceQuorumComputed,
        request_id=hex64,
        success=st.just(False),
        valid_inferences=st.lists(hex32, max_size=20),
        joint_hash=hex64,
        output=texts,
        from_node=hex64,
        reason=st.sampled_from(["expired", "not_enough_commits", "no_cluster_of_needed_size"]),
    ),
    wire.PacketType.PEER_INFO: peer_models.flatmap(
        lambda mh: st.builds(
            wire.PeerInfo,
            models=st.just(mh[0]),
            embedding_models=st.lists(names, max_size=4),
            workers=st.dictionaries(names, st.integers(0, 64), max_size=8),
            device=names,
            version=names,
            api_url=st.none() | st.text(min_size=1, max_size=60),
            model_hashes=st.just(mh[1]),
        )
    ),
    wire.PacketType.PEER_STATUS: st.builds(
        wire.PeerStatus,
        load=st.floats(0, 1000, **finite),
        queue_depth=st.integers(0, 10_000),
        tokens_per_s=st.floats(0, 1e6, **finite),
        busy_workers=st.integers(0, 64),
        total_workers=st.integers(0, 64),
        uptime_s=st.floats(0, 1e9, **finite),
    ),
}


def test_strategies_cover_every_packet_type() -> None:
    assert set(BODIES) == set(wire.PacketType)


def _round_trip(body: wire._Body) -> None:
    frame = wire.encode(body, KEY)
    pkt = wire.decode(frame)
    assert pkt.body == body
    assert pkt.type is body.packet_type
    # re-validating the decoded body reproduces it (schema is closed under its own output)
    assert wire.validate_body(pkt.body.model_dump(), pkt.type) == body


@pytest.mark.parametrize("ptype", list(wire.PacketType), ids=str)
@settings(FAST, max_examples=60)
@given(data=st.data())
def test_round_trip(ptype: wire.PacketType, data: st.DataObject) -> None:
    _round_trip(data.draw(BODIES[ptype]))


def _only_wire_errors(frame: bytes) -> wire.SignedPacket | None:
    try:
        return wire.decode(frame)
    except WireError as exc:
        assert isinstance(exc.reason, wire.WireReason)
        return None


@settings(FAST, max_examples=1000)
@given(data=st.binary(max_size=2048))
def test_random_bytes_only_raise_wire_error(data: bytes) -> None:
    assert _only_wire_errors(data) is None


VALID_FRAMES = [wire.encode(b, KEY, ts_ms=now_ms() + 10**9) for b in sample_bodies()]


@settings(FAST, max_examples=1000)
@given(
    index=st.integers(0, len(VALID_FRAMES) - 1),
    position=st.integers(0, 10**6),
    new_byte=st.integers(0, 255),
)
def test_single_byte_mutations_only_raise_wire_error(index: int, position: int, new_byte: int) -> None:
    frame = bytearray(VALID_FRAMES[index])
    pos = position % len(frame)
    if frame[pos] == new_byte:
        new_byte ^= 0xFF
    frame[pos] = new_byte
    # The frames carry a far-future ts: anything that survives the signature check is
    # still rejected (clock_skew), so a mutation can never be accepted.
    assert _only_wire_errors(bytes(frame)) is None


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


@settings(FAST, max_examples=300)
@given(
    header=st.dictionaries(st.sampled_from(["v", "type", "from", "ts", "nonce", "body", "x"]), msgpack_values)
)
def test_signed_garbage_headers_only_raise_wire_error(header: dict) -> None:
    """Validly signed payloads with arbitrary header/body content: the schema must hold."""
    payload = msgpack.packb(header, use_bin_type=True)
    frame = msgpack.packb([payload, KEY.sign(payload).signature], use_bin_type=True)
    assert _only_wire_errors(frame) is None


FIELD_NAMES = sorted({name for model in wire.BODY_MODELS.values() for name in model.model_fields})


@settings(FAST, max_examples=300)
@given(
    ptype=st.sampled_from(list(wire.PacketType)),
    body=st.dictionaries(st.sampled_from(FIELD_NAMES), msgpack_values, max_size=8),
)
def test_signed_garbage_bodies_are_rejected_or_valid(ptype: wire.PacketType, body: dict) -> None:
    """A correctly signed, fresh packet with an arbitrary body: only WireError, or a valid body."""
    packet = {
        "v": 1,
        "type": ptype.value,
        "from": bytes(KEY.verify_key),
        "ts": now_ms(),
        "nonce": b"n" * 16,
        "body": body,
    }
    payload = msgpack.packb(packet, use_bin_type=True)
    pkt = _only_wire_errors(msgpack.packb([payload, KEY.sign(payload).signature], use_bin_type=True))
    if pkt is not None:
        assert wire.validate_body(pkt.body.model_dump(), ptype) == pkt.body
