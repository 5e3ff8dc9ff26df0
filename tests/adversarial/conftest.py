"""Helpers for attack tests: an in-process daemon (the real `node.daemon.run.serve`) and frame
generators for fuzzing.

`InProcessServer.daemon` (tests/inprocess.py) runs `serve()` — real libp2p host, real
Hypercorn on 127.0.0.1, real orchestrator, store and engines (a tiny random Llama and the
real MiniLM) — on its own trio loop in a thread, so a synchronous test (hypothesis) can hammer its HTTP API over
real sockets and then check that the loop is still alive.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from node import wire
from node.identity import Identity
from tests.inprocess import InProcessServer, daemon_settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_MODEL = "tiny-llama"
EMBEDDING = "all-minilm-l6-v2"
ADMIN_TOKEN = "adversarial-admin-token-5f3c9a1e7b"
MODEL_HASH = "sha256:" + "ee" * 32  # a well-formed weights hash (commits carry one)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_models import make_tiny_llama_dir

    return make_tiny_llama_dir(tmp_path_factory.mktemp("adv-tiny-llama"), seed=3)


class ErrorLog(logging.Handler):
    """Collects ERROR+ records (unhandled exceptions in the app or the loop end up here)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [f"{r.name}: {r.getMessage()}" for r in self.records]


# The real daemon on its own loop in a thread (tests/inprocess.py).
InProcessNode = InProcessServer


def node_settings(data_dir: Path, tiny_dir: Path, **overrides: Any) -> Any:
    """An in-process daemon's settings with the tiny Llama, MiniLM and the admin token."""
    return daemon_settings(
        data_dir,
        model=TINY_MODEL,
        model_dir=tiny_dir,
        embedding_model=EMBEDDING,
        admin_token=ADMIN_TOKEN,
        **overrides,
    )


@pytest.fixture(scope="package")
def inprocess_node(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Iterator[InProcessNode]:
    import torch

    torch.set_num_threads(1)
    # One node for the package (torn down after its last test): HTTP fuzzing and the
    # security checks share it.
    node = InProcessServer.daemon(node_settings(tmp_path_factory.mktemp("adv-node"), tiny_llama_dir)).start()
    try:
        yield node
    finally:
        node.stop()
    assert node.stopped, "the in-process node did not stop"


# ---- frames ------------------------------------------------------------------------------


def request_body(
    prompt: str = "Name a colour.",
    *,
    quorum: int = 1,
    max_time_ms: int = 60_000,
    model: str = TINY_MODEL,
    max_tokens: int = 8,
    limits: wire.WireLimits = wire.DEFAULT_LIMITS,
    commit_window_ms: int | None = None,
) -> wire.InferenceRequest:
    """A request body; `limits` lets a test build one over a receiver's limits."""
    raw = {
        "prompt": prompt,
        "accepted_models": [model],
        "temperature": 0.0,
        "max_tokens": max_tokens,
        "security_frame": {
            "quorum": quorum,
            "max_time_ms": max_time_ms,
            "sec_distance": 0.2,
            "sec_percentage": 0.6,
            "embedding_model": EMBEDDING,
            "commit_window_ms": commit_window_ms,
        },
    }
    return wire.InferenceRequest.model_validate(raw, context={"limits": limits})


def sample_frames(key: Identity) -> list[bytes]:
    """One valid frame of every packet type, signed by `key` (seeds for mutation)."""
    rid = "ab" * 32
    iid = "cd" * 16
    bodies: list[wire.Body] = [
        request_body(),
        wire.InferenceCommit(
            request_id=rid, inference_id=iid, model=TINY_MODEL, model_hash=MODEL_HASH, commit=b"\x01" * 32
        ),
        wire.InferenceRevealRequest(
            request_id=rid,
            commits=[wire.CommitRef(node_id=key.node_id, inference_id=iid, commit=b"\x02" * 32)],
        ),
        wire.InferenceReveal(
            request_id=rid,
            inference_id=iid,
            output="blue",
            b=b"\x0f" * 48,
            model=TINY_MODEL,
            model_hash=MODEL_HASH,
        ),
        wire.InferenceRevealRejected(request_id=rid, inference_id=iid, reason="hamming: too far"),
        wire.InferenceQuorumComputed(
            request_id=rid,
            success=True,
            valid_inferences=[iid],
            joint_hash="ef" * 32,
            output="blue",
            from_node=key.node_id,
        ),
        wire.PeerInfo(
            models=[TINY_MODEL],
            embedding_models=[EMBEDDING],
            workers={TINY_MODEL: 1},
            device="cpu",
            version="1",
        ),
        wire.PeerStatus(load=0.5, queue_depth=1, tokens_per_s=3.0),
    ]
    return [wire.encode(b, key.signing_key) for b in bodies]


_WEIRD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    1.5,
    float("nan"),
    float("inf"),
    -0.0,
    "",
    "x" * 300,
    "\u0000",
    "\ud7ff",
    b"",
    b"\x00" * 33,
    [],
    [1, 2],
    {},
    {"a": 1},
    "ab" * 32,
    "zz" * 32,
]


class FrameMutator:
    """Produces invalid frames: byte-level mutations of valid frames, random bytes, random
    msgpack, and structure-level mutations of the payload that are then *re-signed* with a
    real key (so they pass the signature check and reach header and schema validation)."""

    def __init__(self, seed: int, signer: Identity) -> None:
        self.rng = random.Random(seed)
        self.signer = signer
        self.seeds = sample_frames(signer)

    def _bytes_mutation(self, frame: bytes) -> bytes:
        r, data = self.rng, bytearray(frame)
        op = r.randrange(6)
        if op == 0:  # flip 1-8 bits
            for _ in range(r.randint(1, 8)):
                i = r.randrange(len(data))
                data[i] ^= 1 << r.randrange(8)
        elif op == 1:  # truncate
            del data[r.randrange(len(data)) :]
        elif op == 2:  # insert random bytes
            i = r.randrange(len(data) + 1)
            data[i:i] = r.randbytes(r.randint(1, 16))
        elif op == 3:  # overwrite a run with interesting bytes
            i = r.randrange(len(data))
            run = r.choice(
                [b"\xff" * 4, b"\x00" * 4, b"\xdf\xff\xff\xff\xff", b"\xc1", b"\xdb\xff\xff\xff\xff"]
            )
            data[i : i + len(run)] = run
        elif op == 4:  # duplicate a slice
            i = r.randrange(len(data))
            j = min(len(data), i + r.randint(1, 64))
            data[j:j] = data[i:j]
        else:  # delete a slice
            i = r.randrange(len(data))
            del data[i : i + r.randint(1, 32)]
        return bytes(data)

    def _restructure(self, frame: bytes) -> bytes:
        """Decode the payload, damage the header or the body, re-encode and re-sign."""
        r = self.rng
        payload, _sig = msgpack.unpackb(frame, raw=False)
        packet = msgpack.unpackb(payload, raw=False)
        body = packet["body"]
        op = r.randrange(7)
        if op == 0 and body:  # replace a body field with a weird value
            body[r.choice(sorted(body))] = r.choice(_WEIRD_VALUES)
        elif op == 1:  # add an unknown field
            body[r.choice(["x", "extra", "__proto__", ""])] = r.choice(_WEIRD_VALUES)
        elif op == 2 and body:  # drop a field
            body.pop(r.choice(sorted(body)))
        elif op == 3:  # damage the header
            key = r.choice(["v", "type", "ts", "nonce", "from"])
            packet[key] = r.choice(_WEIRD_VALUES + ["peer_infox", 2, "inference_request"])
        elif op == 4:  # drop or add a header key
            if r.random() < 0.5:
                packet.pop(r.choice(sorted(packet)))
            else:
                packet["extra"] = 1
        elif op == 5:  # timestamp far from now
            packet["ts"] = packet["ts"] + r.choice([-1, 1]) * r.randint(61_000, 10**9)
        else:  # body of another packet type
            packet["type"] = r.choice([t.value for t in wire.PacketType])
        try:
            new_payload = msgpack.packb(packet, use_bin_type=True)
        except (TypeError, ValueError, OverflowError):
            new_payload = payload[: len(payload) // 2]
        sig = self.signer.signing_key.sign(new_payload).signature
        return msgpack.packb([new_payload, sig], use_bin_type=True)

    def _random_msgpack(self) -> bytes:
        r = self.rng

        def value(depth: int) -> Any:
            if depth > 3 or r.random() < 0.4:
                return r.choice(_WEIRD_VALUES)
            if r.random() < 0.5:
                return [value(depth + 1) for _ in range(r.randint(0, 4))]
            return {str(r.randint(0, 9)): value(depth + 1) for _ in range(r.randint(0, 4))}

        try:
            return msgpack.packb(value(0), use_bin_type=True)
        except (TypeError, ValueError, OverflowError):
            return b"\x93\x01\x02"

    def frame(self) -> bytes:
        """One frame that `wire.decode` must reject (checked; valid results are re-drawn)."""
        while True:
            kind = self.rng.random()
            if kind < 0.45:
                out = self._bytes_mutation(self.rng.choice(self.seeds))
            elif kind < 0.8:
                out = self._restructure(self.rng.choice(self.seeds))
            elif kind < 0.9:
                out = self.rng.randbytes(self.rng.randint(0, 512))
            else:
                out = self._random_msgpack()
            if not out:
                out = b"\x00"
            try:
                wire.decode(out)
            except wire.WireError:
                return out
            # A mutation that still decodes (e.g. a different valid msgpack spelling) is
            # a legitimate frame, not fuzz: draw again.
