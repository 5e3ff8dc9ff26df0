"""A Sybil attacker for the proof-of-inference tests: several ed25519 identities behind
one real libp2p host in the test process, that never run the model.

It speaks the real wire format (frames signed with each identity's key, published on the
real gossip topic) and computes real commitments: the embedding of its chosen output by
the same MiniLM the daemons use, so its reveals open its commits and pass the Hamming
check. What it cannot do is make the accepted model produce its output: that is what the
re-check catches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import trio

from consensus.commitments import binary_embedding, make_commit
from node import wire
from node.identity import Identity
from tests.node.p2p.conftest import new_node

OFF_TOPIC = (
    "Photosynthesis is the process by which green plants use sunlight, water and carbon "
    "dioxide to make glucose and release oxygen inside their chloroplasts."
)


@cache
def embed_fn() -> Any:
    """The daemons' embedding model, loaded once per test process."""
    from engine.embedding import load_embed_fn

    return load_embed_fn("all-minilm-l6-v2")


@dataclass
class Claim:
    """One identity's claimed output for a request, with its commitment."""

    identity: Identity
    inference_id: str
    output: str
    b: bytes
    commit: bytes


@dataclass
class Sybil:
    """``count`` identities that commit, ask for reveals and reveal without inference."""

    count: int = 3
    model: str = "tiny-llama"
    model_hash: str = ""  # the accepted weights' hash: public, so the attacker claims it
    identities: list[Identity] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.identities:
            self.identities = [Identity.generate() for _ in range(self.count)]

    def claims(self, request_id: str, outputs: Sequence[str]) -> list[Claim]:
        """One claim per identity; ``outputs`` is cycled (one text for all = identical answers)."""
        texts = [outputs[i % len(outputs)] for i in range(len(self.identities))]
        vectors = np.asarray(embed_fn()(texts), dtype=np.float32)
        out = []
        for ident, text, vec in zip(self.identities, texts, vectors, strict=True):
            iid = wire.inference_id(request_id, ident.public_key)
            b = binary_embedding(vec)
            out.append(Claim(ident, iid, text, b, make_commit(b, ident.public_key, iid)))
        return out

    def commit_frames(self, request_id: str, claims: Sequence[Claim]) -> list[bytes]:
        return [
            wire.encode(
                wire.InferenceCommit(
                    request_id=request_id,
                    inference_id=c.inference_id,
                    model=self.model,
                    model_hash=self.model_hash,
                    commit=c.commit,
                ),
                c.identity.signing_key,
            )
            for c in claims
        ]

    def reveal_request_frame(self, request_id: str, claims: Sequence[Claim]) -> bytes:
        refs = [
            wire.CommitRef(node_id=c.identity.node_id, inference_id=c.inference_id, commit=c.commit)
            for c in claims
        ]
        body = wire.InferenceRevealRequest(request_id=request_id, commits=refs)
        return wire.encode(body, claims[0].identity.signing_key)

    def reveal_frames(self, request_id: str, claims: Sequence[Claim], *, mismatched: bool = False) -> list[bytes]:
        """Reveals of the claims; ``mismatched`` reveals a different text than committed."""
        frames = []
        for c in claims:
            output = c.output + " (changed after commit)" if mismatched else c.output
            body = wire.InferenceReveal(
                request_id=request_id,
                inference_id=c.inference_id,
                output=output,
                b=c.b,
                model=self.model,
                model_hash=self.model_hash,
            )
            frames.append(wire.encode(body, c.identity.signing_key))
        return frames


async def race(
    *,
    connect_to: str,
    submit: Callable[[], str],
    frames_for: Callable[[str], Sequence[bytes]],
    linger_s: float = 2.0,
) -> str:
    """Connect first, then submit the honest request (``submit`` returns its id) and
    publish ``frames_for(request_id)`` at once: the attacker is as fast as it can be."""
    async with trio.open_nursery() as nursery:
        host = new_node(Identity.generate())
        await nursery.start(host.run)
        await host.connect(connect_to)
        with trio.move_on_after(15):
            await host.wait_for_topic_peers(1)
        request_id = await trio.to_thread.run_sync(submit)
        for frame in frames_for(request_id):
            await host.publish(frame)
        await trio.sleep(linger_s)  # let the mesh carry the last frames before hanging up
        nursery.cancel_scope.cancel()
    return request_id


async def copy_after_reveal(
    *, connect_to: str, submit: Callable[[], str], copier: Identity, model: str, model_hash: str
) -> tuple[str, bool]:
    """Submit, wait for the first honest reveal on gossip, then claim its output under
    ``copier``'s key (commit and reveal at once). Returns (request id, whether a reveal
    was seen to copy)."""
    async with trio.open_nursery() as nursery:
        host = new_node(Identity.generate())
        await nursery.start(host.run)
        await host.connect(connect_to)
        with trio.move_on_after(15):
            await host.wait_for_topic_peers(1)
        request_id = await trio.to_thread.run_sync(submit)
        copied = False
        with trio.move_on_after(90):
            async for pkt in host.packets():
                body = pkt.body
                if isinstance(body, wire.InferenceReveal) and body.request_id == request_id:
                    iid = wire.inference_id(request_id, copier.public_key)
                    commit = make_commit(body.b, copier.public_key, iid)
                    frames = [
                        wire.encode(
                            wire.InferenceCommit(
                                request_id=request_id,
                                inference_id=iid,
                                model=model,
                                model_hash=model_hash,
                                commit=commit,
                            ),
                            copier.signing_key,
                        ),
                        wire.encode(
                            wire.InferenceReveal(
                                request_id=request_id,
                                inference_id=iid,
                                output=body.output,
                                b=body.b,
                                model=model,
                                model_hash=model_hash,
                            ),
                            copier.signing_key,
                        ),
                    ]
                    for frame in frames:
                        await host.publish(frame)
                    copied = True
                    break
        await trio.sleep(2.0)
        nursery.cancel_scope.cancel()
    return request_id, copied


def model_output(model_dir: Any, request_id: str, body: wire.InferenceRequest, *, seed: int | None = None) -> str:
    """What ``model_dir`` answers to the request through the daemons' own engine inputs
    (``seed`` replaces the request's: a different-seed attacker)."""
    from engine.core import EngineCore
    from engine.types import GenerationRequest
    from node.daemon.compute import engine_input

    messages, sampling = engine_input(request_id, body)
    if seed is not None:
        sampling.seed = seed
    core = EngineCore(model_dir, kv_cache_bytes=16 * 1024 * 1024)
    try:
        (res,) = core.generate([GenerationRequest(request_id="attacker", messages=messages, sampling=sampling)])
    finally:
        core.stop()
    return res.text
