"""Builders for the foundation tests: sample bodies and hand-made (possibly bad) frames."""

from __future__ import annotations

import time
from typing import Any

import msgpack
from nacl.signing import SigningKey

from node import wire


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def raw_frame(packet: dict[str, Any], key: SigningKey, *, signature: bytes | None = None) -> bytes:
    """Sign an arbitrary packet map, so tests can build frames the encoder would refuse."""
    payload = msgpack.packb(packet, use_bin_type=True)
    sig = key.sign(payload).signature if signature is None else signature
    return msgpack.packb([payload, sig], use_bin_type=True)


def packet_dict(body: wire._Body, key: SigningKey, /, **header: Any) -> dict[str, Any]:
    """The header+body map that ``encode`` would sign; override any header key."""
    base: dict[str, Any] = {
        "v": wire.PROTOCOL_VERSION,
        "type": body.packet_type.value,
        "from": bytes(key.verify_key),
        "ts": now_ms(),
        "nonce": b"\x01" * wire.NONCE_BYTES,
        "body": body.model_dump(mode="python"),
    }
    base.update(header)
    return base


def split(frame: bytes) -> tuple[dict[str, Any], bytes, bytes]:
    payload, sig = msgpack.unpackb(frame)
    return msgpack.unpackb(payload), payload, sig


REQ_ID = "ab" * 32
INF_ID = "cd" * 16
NODE_ID = "ef" * 32
MODEL_HASH = "sha256:" + "5a" * 32


def sample_bodies() -> list[wire._Body]:
    """One valid body of every packet type."""
    frame = wire.SecurityFrame(
        quorum=3,
        max_time_ms=30_000,
        sec_distance=0.2,
        sec_percentage=0.66,
        embedding_model="all-minilm-l6-v2",
        commit_window_ms=5_000,
    )
    return [
        wire.InferenceRequest(
            prompt="What is the capital of France?",
            accepted_models=["smollm2-135m-instruct", f"gemma3-270m@{MODEL_HASH}"],
            temperature=0.7,
            max_tokens=64,
            seed=42,
            security_frame=frame,
        ),
        wire.InferenceCommit(
            request_id=REQ_ID,
            inference_id=INF_ID,
            model="smollm2-135m-instruct",
            model_hash=MODEL_HASH,
            commit=b"\x07" * 32,
        ),
        wire.InferenceRevealRequest(
            request_id=REQ_ID,
            commits=[wire.CommitRef(node_id=NODE_ID, inference_id=INF_ID, commit=b"\x09" * 32)],
        ),
        wire.InferenceReveal(
            request_id=REQ_ID,
            inference_id=INF_ID,
            output="Paris.",
            b=b"\xaa" * 48,
            model="smollm2-135m-instruct",
            model_hash=MODEL_HASH,
        ),
        wire.InferenceRevealRejected(request_id=REQ_ID, inference_id=INF_ID, reason="hamming_distance"),
        wire.InferenceQuorumComputed(
            request_id=REQ_ID,
            success=True,
            valid_inferences=[INF_ID],
            joint_hash="12" * 32,
            output="Paris.",
            from_node=NODE_ID,
            representative=INF_ID,
            answer_rule="max_log_likelihood",
            recheck="checked",
        ),
        wire.PeerInfo(
            models=["smollm2-135m-instruct"],
            embedding_models=["all-minilm-l6-v2"],
            workers={"smollm2-135m-instruct": 2},
            device="cpu",
            version="0.1.0",
            api_url="http://127.0.0.1:8420",
            model_hashes={"smollm2-135m-instruct": MODEL_HASH},
        ),
        wire.PeerStatus(load=0.5, queue_depth=3, tokens_per_s=120.5, busy_workers=1, total_workers=2),
    ]
