"""Persist, then publish, over a real store: a frame gossip refuses stays unsent and
goes out on the next start; a silent node stages nothing."""

from __future__ import annotations

import secrets

import trio

from node import wire
from node.identity import Identity
from node.orchestrator.events import NodeEvents
from node.orchestrator.outbox import Outbox
from node.store import Store


def commit_body(rid: str, me: Identity) -> wire.InferenceCommit:
    return wire.InferenceCommit(
        request_id=rid,
        inference_id=wire.inference_id(rid, me.public_key),
        model="tiny-llama",
        model_hash="sha256:" + "ab" * 32,
        commit=secrets.token_bytes(32),
    )


def make_outbox(tmp_path, publish, *, silent=False) -> tuple[Outbox, Store, NodeEvents, Identity]:
    me, store, events = Identity.generate(), Store(tmp_path), NodeEvents()
    box = Outbox(
        identity=me, store=store, publish=publish, limits=wire.WireLimits(), events=events, silent=silent
    )
    return box, store, events, me


def test_staged_frames_are_stored_before_they_are_sent_then_marked_sent(tmp_path):
    sent: list[bytes] = []

    async def publish(frame: bytes) -> None:
        sent.append(frame)

    box, store, events, me = make_outbox(tmp_path, publish)
    rid = secrets.token_hex(32)

    async def main():
        sub = events.subscribe(rid)
        staged = box.stage(rid, commit_body(rid, me))
        assert staged is not None and sent == []
        assert [p["packet_id"] for p in store.unsent_packets(rid)] == [staged.packet_id]
        await box.flush(rid, [staged])
        assert sent == [staged.frame] and store.unsent_packets(rid) == []
        assert wire.decode(sent[0]).sender_id == me.node_id
        event = await sub.__anext__()
        assert event["type"] == "sent_inference_commit"
        assert box.events.recent_packets(1)[0]["verdict"] == "sent"

    trio.run(main)
    store.close()


def test_a_refused_frame_stays_unsent_and_is_resent_on_resume(tmp_path):
    up = False
    sent: list[bytes] = []

    async def publish(frame: bytes) -> None:
        if not up:
            raise RuntimeError("no peers")
        sent.append(frame)

    box, store, _, me = make_outbox(tmp_path, publish)
    rid = secrets.token_hex(32)

    async def main():
        nonlocal up
        staged = box.stage(rid, commit_body(rid, me))
        await box.flush(rid, [staged])
        assert sent == [] and len(store.unsent_packets(rid)) == 1
        up = True
        await box.resend_unsent(rid)
        assert sent == [staged.frame] and store.unsent_packets(rid) == []

    trio.run(main)
    store.close()


def test_a_silent_node_stages_nothing(tmp_path):
    async def publish(frame: bytes) -> None:
        raise AssertionError("a silent node published")

    box, store, _, me = make_outbox(tmp_path, publish, silent=True)
    rid = secrets.token_hex(32)
    assert box.stage(rid, commit_body(rid, me)) is None
    assert store.packets_for(rid) == []
    store.close()
