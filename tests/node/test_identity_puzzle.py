"""Identity puzzles: stored beside the key, carried in the signed frame's ``pz`` header,
checked by ``wire.decode`` before the signature, and refused by a real gossip node
before anything reaches the orchestrator's packet channel."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import trio
from typer.testing import CliRunner

from consensus import puzzle
from node import identity as identity_mod
from node import wire
from node.cli.app import app
from node.identity import Identity
from tests.node.p2p.conftest import (
    Net,
    line,
    new_node,
    request_body,
    run_trio,
    wait_until,
)

DIFF = 8
LIMITS = wire.WireLimits(min_puzzle_difficulty=DIFF)


def _commit_body(tag: str) -> wire.InferenceCommit:
    rid = hashlib.sha256(tag.encode()).hexdigest()
    return wire.InferenceCommit(
        request_id=rid,
        inference_id=rid[:32],
        model="m",
        model_hash="sha256:" + "0" * 64,
        commit=bytes(32),
        sortition_round=0,
        capacity=1,
    )


def _bad_nonce(key: bytes) -> int:
    return next(n for n in range(10_000) if not puzzle.verify(key, n, DIFF))


def test_puzzle_is_solved_once_stored_and_reloaded(tmp_path: Path) -> None:
    ident = Identity.generate()
    first = identity_mod.ensure_puzzle(ident, tmp_path, DIFF)
    assert first.solved and puzzle.verify(ident.public_key, first.nonce, DIFF)
    again = identity_mod.ensure_puzzle(ident, tmp_path, DIFF)
    assert not again.solved and again.nonce == first.nonce and again.seconds == 0.0
    # Another key's file does not count: solved anew for this key.
    other = Identity.generate()
    assert identity_mod.load_puzzle(tmp_path, other.public_key, DIFF) in (None, first.nonce)
    identity_mod.puzzle_path(tmp_path).write_text("not json")
    assert identity_mod.load_puzzle(tmp_path, ident.public_key, DIFF) is None


def test_decode_refuses_node_packets_without_a_valid_puzzle() -> None:
    ident = Identity.generate()
    nonce = puzzle.solve(ident.public_key, DIFF)
    body = _commit_body("decode")
    missing = wire.encode(body, ident.signing_key)
    wrong = wire.encode(body, ident.signing_key, puzzle_nonce=_bad_nonce(ident.public_key))
    for frame in (missing, wrong):
        with pytest.raises(wire.WireError) as info:
            wire.decode(frame, limits=LIMITS)
        assert info.value.reason is wire.WireReason.BAD_PUZZLE
    good = wire.decode(wire.encode(body, ident.signing_key, puzzle_nonce=nonce), limits=LIMITS)
    assert good.body == body
    # Checked before the signature: a forged signature with no puzzle is a puzzle failure.
    forged = bytearray(missing)
    forged[-1] ^= 1
    with pytest.raises(wire.WireError) as info:
        wire.decode(bytes(forged), limits=LIMITS)
    assert info.value.reason is wire.WireReason.BAD_PUZZLE
    # Client requests are exempt; difficulty 0 checks nothing (and a pz is still allowed).
    req = wire.decode(wire.encode(request_body("client"), Identity.generate().signing_key), limits=LIMITS)
    assert req.type is wire.PacketType.INFERENCE_REQUEST
    assert wire.decode(missing).body == body
    assert wire.decode(wire.encode(body, ident.signing_key, puzzle_nonce=nonce)).body == body


def test_registered_puzzle_goes_into_every_frame_of_that_key() -> None:
    ident = Identity.generate()
    nonce = puzzle.solve(ident.public_key, DIFF)
    wire.register_puzzle(ident.public_key, nonce)
    try:
        assert wire.decode(wire.encode(_commit_body("reg"), ident.signing_key), limits=LIMITS)
    finally:
        wire.register_puzzle(ident.public_key, None)
    with pytest.raises(wire.WireError):
        wire.decode(wire.encode(_commit_body("reg"), ident.signing_key), limits=LIMITS)


def test_gossip_node_rejects_unpaid_identity_before_delivery() -> None:
    """attacker - victim: the victim demands puzzles. The attacker's commit (no pz) and a
    commit with a wrong pz are refused by the validator (counted as bad_puzzle) and never
    reach the victim's packet channel, which is what the orchestrator consumes; a commit
    from a paid identity, relayed by the same attacker, is delivered."""
    paid = Identity.generate()
    paid_nonce = puzzle.solve(paid.public_key, DIFF)

    async def body() -> None:
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            attacker = await net.start(new_node())
            victim_id = Identity.generate()
            wire.register_puzzle(victim_id.public_key, puzzle.solve(victim_id.public_key, DIFF))
            victim = await net.start(new_node(victim_id, limits=LIMITS))
            await line(net, [attacker, victim])
            raw = attacker._pubsub
            raw.remove_topic_validator(attacker.config.topic)
            unpaid = wire.encode(_commit_body("unpaid"), attacker.identity.signing_key)
            wrong = wire.encode(
                _commit_body("wrong"),
                attacker.identity.signing_key,
                puzzle_nonce=_bad_nonce(attacker.identity.public_key),
            )
            ok = wire.encode(_commit_body("paid"), paid.signing_key, puzzle_nonce=paid_nonce)
            for frame in (unpaid, wrong, ok):
                await raw.publish(attacker.config.topic, frame)
            await wait_until(
                lambda: (
                    any(p.sender == paid.public_key for p in net.received[victim])
                    and victim.counters.rejected[wire.WireReason.BAD_PUZZLE] >= 2
                )
            )
            senders = {p.sender for p in net.received[victim]}
            assert attacker.identity.public_key not in senders
            nursery.cancel_scope.cancel()
            wire.register_puzzle(victim_id.public_key, None)

    run_trio(body)


def test_rakis_init_solves_the_puzzle_and_reports_the_time(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["init", "--data-dir", str(tmp_path), "--puzzle-difficulty", "10"])
    assert result.exit_code == 0, result.output
    m = re.search(r"puzzle: .*node\.puzzle \(difficulty 10, solved in (\d+\.\d) s\)", result.output)
    assert m, result.output
    ident = identity_mod.load(tmp_path)
    assert identity_mod.load_puzzle(tmp_path, ident.public_key, 10) is not None
