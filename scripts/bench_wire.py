"""Wire codec throughput: sign+encode and decode+verify packets per second.

Run: .venv/bin/python scripts/bench_wire.py [--seconds 2] [--type inference_request]
Single-threaded; numbers depend on the CPU and on what else is running.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nacl.signing import SigningKey  # noqa: E402

from node import wire  # noqa: E402

REQ_ID = "ab" * 32
INF_ID = "cd" * 16


def sample(ptype: wire.PacketType) -> wire._Body:
    frame = wire.SecurityFrame(
        quorum=3,
        max_time_ms=30_000,
        sec_distance=0.2,
        sec_percentage=0.66,
        embedding_model="all-minilm-l6-v2",
    )
    return {
        wire.PacketType.INFERENCE_REQUEST: wire.InferenceRequest(
            prompt="Explain the commit-reveal scheme in two sentences. " * 4,
            accepted_models=["smollm2-135m-instruct"],
            temperature=0.7,
            max_tokens=128,
            seed=1,
            security_frame=frame,
        ),
        wire.PacketType.INFERENCE_COMMIT: wire.InferenceCommit(
            request_id=REQ_ID,
            inference_id=INF_ID,
            model="smollm2-135m-instruct",
            model_hash="sha256:" + "ab" * 32,
            commit=os.urandom(32),
        ),
        wire.PacketType.INFERENCE_REVEAL: wire.InferenceReveal(
            request_id=REQ_ID,
            inference_id=INF_ID,
            output="A commit binds a node to its answer. " * 20,
            b=os.urandom(48),
            model="smollm2-135m-instruct",
            model_hash="sha256:" + "ab" * 32,
        ),
        wire.PacketType.PEER_STATUS: wire.PeerStatus(load=0.4, queue_depth=2, tokens_per_s=150.0),
    }[ptype]


def rate(fn, seconds: float) -> tuple[float, int]:
    """Calls per second of fn over roughly `seconds` (after a short warm-up)."""
    for _ in range(50):
        fn()
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(100):
            fn()
        n += 100
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per figure")
    parser.add_argument(
        "--type",
        dest="types",
        action="append",
        choices=["inference_request", "inference_commit", "inference_reveal", "peer_status"],
        help="packet type(s) to measure (default: all four)",
    )
    args = parser.parse_args()
    key = SigningKey.generate()
    types = [
        wire.PacketType(t)
        for t in (args.types or ["inference_request", "inference_commit", "inference_reveal", "peer_status"])
    ]
    print(
        f"{'packet type':<20} {'frame B':>8} {'sign+encode /s':>15} {'decode+verify /s':>17} {'+replay cache /s':>17}"
    )
    for ptype in types:
        body = sample(ptype)
        frame = wire.encode(body, key)
        enc, _ = rate(lambda b=body: wire.encode(b, key), args.seconds)
        dec, _ = rate(lambda f=frame: wire.decode(f), args.seconds)
        # fresh frames each time so the replay cache accepts them (encode cost excluded)
        frames = [wire.encode(body, key) for _ in range(20_000)]
        seen = wire.SeenCache(max_entries=100_000)
        it = iter(frames)
        start = time.perf_counter()
        n = 0
        for f in it:
            wire.decode(f, seen=seen)
            n += 1
            if time.perf_counter() - start >= args.seconds:
                break
        dec_seen = n / (time.perf_counter() - start)
        print(f"{ptype.value:<20} {len(frame):>8} {enc:>15,.0f} {dec:>17,.0f} {dec_seen:>17,.0f}")


if __name__ == "__main__":
    main()
