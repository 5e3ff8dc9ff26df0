"""Wire format: every rejection reason from a real signed frame made wrong in one way."""

from __future__ import annotations

import hashlib

import msgpack
import pytest
from nacl.signing import SigningKey

from consensus.windows import commit_window_ms
from node import wire
from node.wire import WireError, WireLimits, WireReason
from tests.node.builders import (
    INF_ID,
    MODEL_HASH,
    REQ_ID,
    now_ms,
    packet_dict,
    raw_frame,
    sample_bodies,
    split,
)


def reason_of(frame: object, **kwargs: object) -> WireReason:
    with pytest.raises(WireError) as info:
        wire.decode(frame, **kwargs)  # type: ignore[arg-type]
    return info.value.reason


# ---- happy path -----------------------------------------------------------------------


@pytest.mark.parametrize("body", sample_bodies(), ids=lambda b: b.packet_type.value)
def test_round_trip_every_type(body: wire._Body, key: SigningKey) -> None:
    frame = wire.encode(body, key)
    pkt = wire.decode(frame)
    assert pkt.body == body
    assert pkt.type is body.packet_type
    assert pkt.sender == bytes(key.verify_key) and pkt.sender_id == pkt.sender.hex()
    assert pkt.frame == frame
    assert pkt.packet_id == hashlib.sha256(pkt.payload).hexdigest()
    assert len(pkt.nonce) == wire.NONCE_BYTES and len(pkt.signature) == 64


def test_request_and_inference_ids(key: SigningKey, request_body: wire.InferenceRequest) -> None:
    pkt = wire.decode(wire.encode(request_body, key))
    rid = wire.request_id(pkt)
    assert rid == pkt.packet_id and len(rid) == 64
    iid = wire.inference_id(rid, pkt.sender)
    assert iid == hashlib.sha256(rid.encode() + pkt.sender).hexdigest()[:32]
    commit_pkt = wire.decode(
        wire.encode(
            wire.InferenceCommit(
                request_id=rid, inference_id=iid, model="m", model_hash=MODEL_HASH, commit=b"\0" * 32
            ),
            key,
        )
    )
    with pytest.raises(ValueError):
        wire.request_id(commit_pkt)


def test_fresh_nonce_gives_distinct_packets(key: SigningKey, request_body: wire.InferenceRequest) -> None:
    ts = now_ms()
    a = wire.decode(wire.encode(request_body, key, ts_ms=ts))
    b = wire.decode(wire.encode(request_body, key, ts_ms=ts))
    assert a.packet_id != b.packet_id


def test_encode_refuses_frames_receivers_would_drop(key: SigningKey) -> None:
    body = wire.InferenceReveal(
        request_id=REQ_ID, inference_id=INF_ID, output="x" * 2000, b=b"\1", model="m", model_hash=MODEL_HASH
    )
    with pytest.raises(WireError) as info:
        wire.encode(body, key, limits=WireLimits(max_frame_bytes=1024))
    assert info.value.reason is WireReason.OVERSIZE
    with pytest.raises(ValueError):
        wire.encode(body, key, nonce=b"short")


# ---- one reason code each -------------------------------------------------------------


def test_truncated(key: SigningKey, request_body: wire.InferenceRequest) -> None:
    frame = wire.encode(request_body, key)
    assert reason_of(frame[:-10]) is WireReason.TRUNCATED
    assert reason_of(frame[:1]) in (WireReason.TRUNCATED, WireReason.MALFORMED)
    assert reason_of(b"") is WireReason.TRUNCATED


def test_truncated_payload_inside_a_well_formed_frame(
    key: SigningKey, request_body: wire.InferenceRequest
) -> None:
    _, payload, _ = split(wire.encode(request_body, key))
    cut = payload[:-7]
    frame = msgpack.packb([cut, key.sign(cut).signature])
    assert reason_of(frame) is WireReason.TRUNCATED


def test_malformed(key: SigningKey, request_body: wire.InferenceRequest) -> None:
    assert reason_of(b"\xc1\xc1\xc1") is WireReason.MALFORMED  # 0xc1 is never used by msgpack
    assert reason_of(msgpack.packb({"not": "a frame"})) is WireReason.MALFORMED
    assert reason_of(msgpack.packb([b"payload"])) is WireReason.MALFORMED
    assert reason_of("a string, not bytes") is WireReason.MALFORMED
    assert reason_of(None) is WireReason.MALFORMED
    # payload that is msgpack but not a map
    payload = msgpack.packb([1, 2, 3])
    assert reason_of(msgpack.packb([payload, key.sign(payload).signature])) is WireReason.MALFORMED
    # header with a missing / extra key, or wrong-typed fields
    pkt = packet_dict(request_body, key)
    del pkt["nonce"]
    assert reason_of(raw_frame(pkt, key)) is WireReason.MALFORMED
    assert reason_of(raw_frame({**packet_dict(request_body, key), "x": 1}, key)) is WireReason.MALFORMED
    assert reason_of(raw_frame(packet_dict(request_body, key, ts="now"), key)) is WireReason.MALFORMED
    assert reason_of(raw_frame(packet_dict(request_body, key, nonce=b"1"), key)) is WireReason.MALFORMED
    assert reason_of(raw_frame(packet_dict(request_body, key, body=[1]), key)) is WireReason.MALFORMED
    assert (
        reason_of(raw_frame(packet_dict(request_body, key, **{"from": b"k" * 31}), key))
        is WireReason.MALFORMED
    )
    # trailing bytes after the frame
    assert reason_of(wire.encode(request_body, key) + b"\x00") is WireReason.MALFORMED


def test_deep_nesting_is_malformed_not_a_crash() -> None:
    assert reason_of(b"\x91" * 100_000 + b"\xc0") is WireReason.MALFORMED


def test_oversize_is_checked_before_decoding(key: SigningKey, request_body: wire.InferenceRequest) -> None:
    limits = WireLimits()
    garbage = b"\xc1" * (limits.max_frame_bytes + 1)  # would be MALFORMED if it were parsed
    assert reason_of(garbage) is WireReason.OVERSIZE
    big = wire.InferenceRequest(**{**request_body.model_dump(), "prompt": "p" * 5000})
    assert reason_of(wire.encode(big, key), limits=WireLimits(max_frame_bytes=4096)) is WireReason.OVERSIZE


def test_bad_version(key: SigningKey, request_body: wire.InferenceRequest) -> None:
    assert wire.PROTOCOL_VERSION == 2
    # protocol 1 nodes neither re-check nor honour the commit window: refused
    assert reason_of(raw_frame(packet_dict(request_body, key, v=1), key)) is WireReason.BAD_VERSION
    assert reason_of(raw_frame(packet_dict(request_body, key, v=3), key)) is WireReason.BAD_VERSION
    assert reason_of(raw_frame(packet_dict(request_body, key, v="1"), key)) is WireReason.BAD_VERSION
    pkt = packet_dict(request_body, key)
    del pkt["v"]
    assert reason_of(raw_frame(pkt, key)) is WireReason.BAD_VERSION


def test_unknown_type(key: SigningKey, request_body: wire.InferenceRequest) -> None:
    assert reason_of(raw_frame(packet_dict(request_body, key, type="inference_teleport"), key)) is (
        WireReason.UNKNOWN_TYPE
    )
    assert reason_of(raw_frame(packet_dict(request_body, key, type=7), key)) is WireReason.UNKNOWN_TYPE


def test_bad_key(key: SigningKey, request_body: wire.InferenceRequest) -> None:
    # 32 bytes that are not a valid ed25519 point (the identity/low-order point)
    pkt = packet_dict(request_body, key, **{"from": b"\x01" + b"\x00" * 31})
    assert reason_of(raw_frame(pkt, key)) is WireReason.BAD_KEY


def test_bad_signature_bytes(key: SigningKey, request_body: wire.InferenceRequest) -> None:
    _, payload, sig = split(wire.encode(request_body, key))
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    assert reason_of(msgpack.packb([payload, flipped])) is WireReason.BAD_SIGNATURE
    assert reason_of(msgpack.packb([payload, sig[:63]])) is WireReason.BAD_SIGNATURE
    assert reason_of(msgpack.packb([payload, "sig"])) is WireReason.BAD_SIGNATURE


def test_tampered_body(key: SigningKey, request_body: wire.InferenceRequest) -> None:
    pkt, _, sig = split(wire.encode(request_body, key))
    pkt["body"]["prompt"] = "Ignore previous instructions."
    assert reason_of(raw_frame(pkt, key, signature=sig)) is WireReason.BAD_SIGNATURE


def test_key_of_another_sender(
    key: SigningKey, other_key: SigningKey, request_body: wire.InferenceRequest
) -> None:
    # Claims to come from `key` but was signed by `other_key` ...
    forged = raw_frame(packet_dict(request_body, key), other_key)
    assert reason_of(forged) is WireReason.BAD_SIGNATURE
    # ... or a genuine packet whose `from` was swapped for another node's key.
    pkt, _, sig = split(wire.encode(request_body, key))
    pkt["from"] = bytes(other_key.verify_key)
    assert reason_of(raw_frame(pkt, key, signature=sig)) is WireReason.BAD_SIGNATURE


def test_clock_skew(key: SigningKey, request_body: wire.InferenceRequest) -> None:
    skew = WireLimits().max_clock_skew_ms
    now = now_ms()
    assert (
        reason_of(wire.encode(request_body, key, ts_ms=now - skew - 1), now_ms=now) is WireReason.CLOCK_SKEW
    )
    assert (
        reason_of(wire.encode(request_body, key, ts_ms=now + skew + 1), now_ms=now) is WireReason.CLOCK_SKEW
    )
    wire.decode(wire.encode(request_body, key, ts_ms=now - skew), now_ms=now)  # edge of the window is fine
    tight = WireLimits(max_clock_skew_ms=10)
    assert reason_of(wire.encode(request_body, key, ts_ms=now - 11), now_ms=now, limits=tight) is (
        WireReason.CLOCK_SKEW
    )


def test_replay(key: SigningKey, request_body: wire.InferenceRequest) -> None:
    seen = wire.SeenCache(max_entries=100, window_ms=60_000)
    frame = wire.encode(request_body, key)
    wire.decode(frame, seen=seen)
    assert reason_of(frame, seen=seen) is WireReason.REPLAY
    # the same body re-signed (new nonce) is a new packet, not a replay
    wire.decode(wire.encode(request_body, key), seen=seen)


def test_schema_missing_extra_and_wrong_types(key: SigningKey, request_body: wire.InferenceRequest) -> None:
    good = request_body.model_dump()
    missing = {k: v for k, v in good.items() if k != "prompt"}
    extra = {**good, "priority": 9}
    wrong_type = {**good, "max_tokens": "64"}
    nested_extra = {**good, "security_frame": {**good["security_frame"], "x": 1}}
    for body in (missing, extra, wrong_type, nested_extra):
        assert reason_of(raw_frame(packet_dict(request_body, key, body=body), key)) is WireReason.SCHEMA


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 2.5},
        {"temperature": -0.1},
        {"temperature": float("nan")},
        {"accepted_models": []},
        {"max_tokens": 0},
        {"prompt": ""},
        {"security_frame": {"quorum": 0}},
        {"security_frame": {"sec_percentage": 0.0}},
        {"security_frame": {"sec_percentage": 1.01}},
        {"security_frame": {"sec_distance": -0.5}},
        {"security_frame": {"max_time_ms": 0}},
        {"security_frame": {"commit_window_ms": 0}},
        {"security_frame": {"commit_window_ms": 30_001}},  # past max_time_ms (30 s)
        {"security_frame": {"commit_window_ms": 5_000.0}},
        {"accepted_models": ["m@sha256:" + "A" * 64]},  # hash must be lowercase hex
        {"accepted_models": ["m@md5:" + "a" * 32]},
        {"accepted_models": ["m@"]},
        {"accepted_models": ["@sha256:" + "a" * 64]},
        {"accepted_models": [" m"]},
        {"accepted_models": ["m", "m"]},
        {"accepted_models": ["m", "m@sha256:" + "a" * 64]},  # bare and pinned: ambiguous
        {"seed": -1},
        {"seed": 2**63},
    ],
    ids=repr,
)
def test_schema_ranges(key: SigningKey, request_body: wire.InferenceRequest, change: dict) -> None:
    body = request_body.model_dump()
    for field, value in change.items():
        if isinstance(value, dict):
            body[field] = {**body[field], **value}
        else:
            body[field] = value
    assert reason_of(raw_frame(packet_dict(request_body, key, body=body), key)) is WireReason.SCHEMA


@pytest.mark.parametrize(
    ("change", "limits"),
    [
        ({"prompt": "x" * 101}, WireLimits(max_prompt_chars=100)),
        ({"max_tokens": 65}, WireLimits(max_tokens=64)),
        ({"security_frame": {"max_time_ms": 5001}}, WireLimits(max_time_ms=5000)),
        ({"security_frame": {"quorum": 5}}, WireLimits(max_commits=4)),
        ({"accepted_models": ["a", "b", "c"]}, WireLimits(max_accepted_models=2)),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_configured_limits(
    key: SigningKey, request_body: wire.InferenceRequest, change: dict, limits: WireLimits
) -> None:
    body = request_body.model_dump()
    for field, value in change.items():
        body[field] = {**body[field], **value} if isinstance(value, dict) else value
    frame = raw_frame(packet_dict(request_body, key, body=body), key)
    assert reason_of(frame, limits=limits) is WireReason.LIMIT
    wire.decode(frame)  # the same frame passes under the default limits


def test_other_type_limits(key: SigningKey) -> None:
    reveal = wire.InferenceReveal(
        request_id=REQ_ID,
        inference_id=INF_ID,
        output="y" * 50,
        b=b"\1" * 10,
        model="m",
        model_hash=MODEL_HASH,
    )
    frame = wire.encode(reveal, key)
    assert reason_of(frame, limits=WireLimits(max_output_chars=49)) is WireReason.LIMIT
    assert reason_of(frame, limits=WireLimits(max_b_bytes=9)) is WireReason.LIMIT


def test_a_reveal_carries_as_many_token_ids_as_max_tokens_allows(key: SigningKey) -> None:
    """A long answer's reveal decodes: msgpack's array bound once sat at 528 elements,
    below a 1,500-token answer's ids, and such a reveal could not be published at all."""

    def reveal(n: int) -> bytes:
        body = wire.InferenceReveal(
            request_id=REQ_ID,
            inference_id=INF_ID,
            output="y",
            b=b"\1",
            model="m",
            model_hash=MODEL_HASH,
            output_tokens=[7] * n,
        )
        return wire.encode(body, key)

    limit = WireLimits().max_tokens + 1  # ids of max_tokens tokens plus EOS
    assert len(wire.decode(reveal(1500)).body.output_tokens) == 1500
    assert len(wire.decode(reveal(limit)).body.output_tokens) == limit
    assert reason_of(reveal(1500), limits=WireLimits(max_tokens=1000)) is WireReason.LIMIT


@pytest.mark.parametrize(
    ("body", "bad"),
    [
        (1, {"commit": b"\0" * 31}),
        (1, {"request_id": "AB" * 32}),  # ids are lowercase hex
        (1, {"inference_id": "cd" * 17}),
        (2, {"commits": []}),
        (3, {"b": "not-bytes"}),
        (1, {"model_hash": "sha256:" + "a" * 63}),
        (1, {"model_hash": "a" * 64}),
        (1, {"model": "m@sha256:" + "a" * 64}),  # the alias goes in model, the hash in model_hash
        (3, {"model_hash": None}),
        (5, {"answer_rule": "joint_hash_mod_n"}),
        (5, {"recheck": "maybe"}),
        (6, {"model_hashes": {"not-listed": "sha256:" + "a" * 64}}),
        (6, {"model_hashes": {"smollm2-135m-instruct": "sha256:xyz"}}),
        (5, {"success": False}),  # failure without a reason
        (5, {"joint_hash": "zz" * 32}),
        (6, {"workers": {"m": -1}}),
        (7, {"load": -1.0}),
        (7, {"tokens_per_s": float("inf")}),
    ],
    ids=repr,
)
def test_schema_other_types(key: SigningKey, body: int, bad: dict) -> None:
    sample = sample_bodies()[body]
    raw = {**sample.model_dump(), **bad}
    assert reason_of(raw_frame(packet_dict(sample, key, body=raw), key)) is WireReason.SCHEMA


def test_validate_body_for_unsigned_input(request_body: wire.InferenceRequest) -> None:
    assert wire.validate_body(request_body.model_dump(), "inference_request") == request_body
    with pytest.raises(WireError) as info:
        wire.validate_body({}, "inference_request")
    assert info.value.reason is WireReason.SCHEMA
    with pytest.raises(WireError) as info:
        wire.validate_body({}, "nope")
    assert info.value.reason is WireReason.UNKNOWN_TYPE


def test_every_reason_is_covered_here() -> None:
    """Guards the suite: a new WireReason must get a test above."""
    tested = {
        "truncated",
        "malformed",
        "oversize",
        "bad_version",
        "unknown_type",
        "bad_key",
        "bad_signature",
        "clock_skew",
        "replay",
        "schema",
        "limit",
        "bad_puzzle",  # tests/node/test_identity_puzzle.py
    }
    assert {r.value for r in WireReason} == tested


# ---- SeenCache -------------------------------------------------------------------------


def test_seen_cache_expires_with_the_window() -> None:
    cache = wire.SeenCache(max_entries=10, window_ms=1000)
    assert cache.check_and_add("a", ts_ms=0, now_ms=0) is False
    assert cache.check_and_add("a", ts_ms=0, now_ms=1000) is True
    assert cache.seen("a", now_ms=1001) is False
    cache.add("b", ts_ms=2000, now_ms=2000)
    assert "a" not in cache._entries  # expired entries are pruned on insert


def test_seen_cache_is_bounded() -> None:
    cache = wire.SeenCache(max_entries=3, window_ms=10**9)
    for i in range(10):
        cache.add(str(i), ts_ms=0, now_ms=0)
    assert len(cache) == 3
    assert cache.seen("9", now_ms=0) and not cache.seen("0", now_ms=0)
    with pytest.raises(ValueError):
        wire.SeenCache(max_entries=0)


def test_seen_cache_records_only_accepted_packets(
    key: SigningKey, request_body: wire.InferenceRequest
) -> None:
    seen = wire.SeenCache()
    frame = wire.encode(request_body, key)
    assert reason_of(frame, seen=seen, limits=WireLimits(max_tokens=1)) is WireReason.LIMIT
    assert len(seen) == 0
    wire.decode(frame, seen=seen)
    assert len(seen) == 1


def test_stored_packets_reverify_without_the_clock(
    key: SigningKey, request_body: wire.InferenceRequest
) -> None:
    old = wire.encode(request_body, key, ts_ms=1_000)
    assert reason_of(old) is WireReason.CLOCK_SKEW
    assert wire.decode(old, check_time=False).ts_ms == 1_000
    pkt, _, sig = split(old)
    pkt["body"]["max_tokens"] = 1
    assert reason_of(raw_frame(pkt, key, signature=sig), check_time=False) is WireReason.BAD_SIGNATURE


def test_unencodable_body_is_a_wire_error(key: SigningKey, request_body: wire.InferenceRequest) -> None:
    with pytest.raises(ValueError):  # the schema refuses it ...
        wire.InferenceRequest(**{**request_body.model_dump(), "prompt": "lone \ud800 surrogate"})
    # ... and encode still fails cleanly for a body built without validation
    bad = request_body.model_copy(update={"prompt": "lone \ud800 surrogate"})
    with pytest.raises(WireError) as info:
        wire.encode(bad, key)
    assert info.value.reason is WireReason.SCHEMA


def test_seen_cache_window_never_shorter_than_the_skew_limit(
    key: SigningKey, request_body: wire.InferenceRequest
) -> None:
    seen = wire.SeenCache(max_entries=10, window_ms=10)  # misconfigured: far below 60 s skew
    now = now_ms()
    frame = wire.encode(request_body, key, ts_ms=now)
    wire.decode(frame, seen=seen, now_ms=now)
    assert reason_of(frame, seen=seen, now_ms=now + 50_000) is WireReason.REPLAY


# ---- protocol 2: commit window, model identity, seed ------------------------------------


def test_a_bare_prompt_request_stays_valid(key: SigningKey) -> None:
    """No seed, no commit window, one unpinned model: the smallest request of protocol 1
    is still a valid protocol 2 request."""
    body = wire.InferenceRequest(
        prompt="Hi",
        accepted_models=["smollm2-135m-instruct"],
        temperature=0.0,
        max_tokens=8,
        security_frame=wire.SecurityFrame(
            quorum=3, max_time_ms=120_000, sec_distance=0.5, sec_percentage=0.6, embedding_model="e"
        ),
    )
    pkt = wire.decode(wire.encode(body, key))
    assert pkt.body == body and pkt.body.seed is None and pkt.body.security_frame.commit_window_ms is None
    assert pkt.body.security_frame.effective_commit_window_ms == 30_000


@pytest.mark.parametrize(
    ("max_time", "explicit", "window"),
    [
        (120_000, None, 30_000),  # a quarter
        (4_000, None, 2_000),  # at least 2 s
        (1_000, None, 1_000),  # never past max_time_ms
        (600_000, None, 60_000),  # at most 60 s
        (600_000, 1, 1),  # explicit values are taken as they are
        (10_000, 10_000, 10_000),
    ],
)
def test_commit_window_default_and_explicit(max_time: int, explicit: int | None, window: int) -> None:
    frame = wire.SecurityFrame(
        quorum=1,
        max_time_ms=max_time,
        sec_distance=0.5,
        sec_percentage=1.0,
        embedding_model="e",
        commit_window_ms=explicit,
    )
    assert frame.effective_commit_window_ms == window == commit_window_ms(max_time, explicit)


def test_request_seed(request_body: wire.InferenceRequest) -> None:
    assert request_body.seed == 42 and wire.request_seed(request_body, REQ_ID) == 42
    unseeded = request_body.model_copy(update={"seed": None})
    rid = hashlib.sha256(b"some request").hexdigest()
    derived = wire.request_seed(unseeded, rid)
    assert derived == int.from_bytes(bytes.fromhex(rid)[:8], "big") & (2**63 - 1)
    assert 0 <= derived <= wire.SEED_MAX and derived == wire.request_seed(unseeded, rid)
    assert wire.request_seed(unseeded, "ff" * 32) == 2**63 - 1
    with pytest.raises(ValueError):
        wire.request_seed(unseeded, "not an id")


def test_model_identity_round_trips(key: SigningKey) -> None:
    pinned = wire.InferenceRequest(
        prompt="Hi",
        accepted_models=["a", f"b@{MODEL_HASH}", "b@sha256:" + "0" * 64],  # b pinned to two weights
        temperature=0.7,
        max_tokens=8,
        seed=0,
        security_frame=wire.SecurityFrame(
            quorum=3, max_time_ms=10_000, sec_distance=0.5, sec_percentage=0.6, embedding_model="e"
        ),
    )
    assert wire.decode(wire.encode(pinned, key)).body == pinned
    info = wire.PeerInfo(
        models=["a", "b"],
        embedding_models=["e"],
        workers={"a": 1},
        device="cpu",
        version="2",
        model_hashes={"b": MODEL_HASH},
    )
    assert wire.decode(wire.encode(info, key)).body.model_hashes == {"b": MODEL_HASH}
    bare = wire.PeerInfo(models=[], embedding_models=[], workers={}, device="cpu", version="2")
    assert bare.model_hashes == {}
