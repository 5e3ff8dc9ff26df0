"""Packets for request ids a node has not seen ("orphans") are kept only up to a cap
and for a while, without losing what a real request needs.

Real Orchestrator and real SQLite files; ``compute=None`` (a relay node) because
nothing here needs an inference: the packets are real signed frames through the real
decoder, and the orchestrator's request view shows which commits it counted.
"""

from __future__ import annotations

import secrets
import sqlite3
from typing import Any

import pytest
import trio

from node import metrics, wire
from node import store as store_mod
from node.config import ConfigError, load_settings
from node.identity import Identity
from node.orchestrator import orphans as orphans_module
from node.orchestrator.config import OrchestratorConfig
from node.orchestrator.orchestrator import Orchestrator
from node.store import Store
from tests.node.orchestrator.test_orchestrator import make_request

pytestmark = pytest.mark.timeout(60)


def commit_packet(request_id: str, node: Identity | None = None) -> wire.SignedPacket:
    """A valid signed commit from ``node`` (a fresh key by default) for ``request_id``."""
    node = node or Identity.generate()
    body = wire.InferenceCommit(
        request_id=request_id,
        inference_id=wire.inference_id(request_id, node.public_key),
        model="tiny-llama",
        model_hash="sha256:" + "ab" * 32,
        commit=secrets.token_bytes(32),
    )
    return wire.decode(wire.encode(body, node.signing_key))


def request_packet(quorum: int = 3) -> wire.SignedPacket:
    return wire.decode(make_request(Identity.generate(), quorum=quorum, max_time_ms=60_000))


def made_up_id() -> str:
    return secrets.token_hex(32)


def counter(name: str) -> float:
    return metrics.REGISTRY.get_sample_value(name) or 0.0


class RecordingLog:
    """Stands in for the module logger to see which events were logged, and how often."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, level: str):
        def record(event: str, **kw: Any) -> None:
            self.events.append((event, kw))
            getattr(self.real, level)(event, **kw)

        return record

    def named(self, event: str) -> list[dict[str, Any]]:
        return [kw for e, kw in self.events if e == event]


async def start(nursery: trio.Nursery, data_dir, **config: Any) -> tuple[Orchestrator, trio.CancelScope]:
    sent: list[bytes] = []

    async def publish(frame: bytes) -> None:
        sent.append(frame)

    orch = Orchestrator(
        identity=Identity.generate(),
        store=Store(data_dir),
        compute=None,
        publish=publish,
        config=OrchestratorConfig(**config),
    )
    scope = trio.CancelScope()

    async def runner(task_status=trio.TASK_STATUS_IGNORED):
        with scope:
            await orch.run(task_status=task_status)

    await nursery.start(runner)
    return orch, scope


def stop(orch: Orchestrator, scope: trio.CancelScope) -> None:
    scope.cancel()
    orch.store.close()


def test_orphans_beyond_the_cap_are_dropped_counted_and_logged_once_per_interval(tmp_path, monkeypatch):
    rec = RecordingLog(orphans_module.log)
    monkeypatch.setattr(orphans_module, "log", rec)
    cap = 5

    async def main():
        async with trio.open_nursery() as nursery:
            orch, scope = await start(
                nursery, tmp_path / "n", max_orphan_packets=cap, orphan_prune_interval_s=3600
            )
            dropped_before = counter("rakis_orphan_packets_dropped_total")
            for _ in range(20):
                await orch.handle_packet(commit_packet(made_up_id()))
                assert orch.store.count_orphan_packets() <= cap
            assert orch.store.count_orphan_packets() == cap == orch.orphan_packets
            assert counter("rakis_orphan_packets_dropped_total") - dropped_before == 15
            assert counter("rakis_orphan_packets") == cap
            logged = rec.named("orphan_packet_dropped")
            assert len(logged) == 1, logged  # once per interval, not once per packet
            assert logged[0]["orphans"] == cap and logged[0]["max_orphan_packets"] == cap

            # Honest traffic goes on: a request and its commits are not subject to the cap.
            req = request_packet()
            await orch.handle_packet(req)
            rid = req.packet_id
            peers = [Identity.generate() for _ in range(3)]
            for peer in peers:
                await orch.handle_packet(commit_packet(rid, peer))
            assert len(orch.store.packets_for(rid)) == 3
            view = orch.get_request(rid)
            assert {c["node_id"] for c in view["commits"]} == {p.node_id for p in peers}

            # A request that is final in the store (not live) is known: not capped either.
            old = request_packet()
            orch.store.add_request(
                old.packet_id,
                old.frame,
                client_id=old.sender_id,
                created_at=old.ts_ms,
                ending_at=old.ts_ms + 1,
            )
            orch.store.finish_request(
                old.packet_id, state="expired", reason="expired", answer=None, members=[]
            )
            await orch.handle_packet(commit_packet(old.packet_id))
            assert len(orch.store.packets_for(old.packet_id)) == 1
            assert orch.store.count_orphan_packets() == cap
            stop(orch, scope)

    trio.run(main)


def test_orphans_older_than_the_ttl_are_pruned_by_the_ticker(tmp_path):
    async def main():
        async with trio.open_nursery() as nursery:
            orch, scope = await start(
                nursery, tmp_path / "n", orphan_packet_ttl_s=0.3, orphan_prune_interval_s=0.2, tick_s=0.05
            )
            pruned_before = counter("rakis_orphan_packets_pruned_total")
            req = request_packet()
            await orch.handle_packet(req)
            await orch.handle_packet(commit_packet(req.packet_id))
            for _ in range(4):
                await orch.handle_packet(commit_packet(made_up_id()))
            assert orch.orphan_packets == 4 == orch.store.count_orphan_packets()
            with trio.fail_after(10):
                while orch.store.count_orphan_packets() or orch.orphan_packets:
                    await trio.sleep(0.05)
            assert counter("rakis_orphan_packets_pruned_total") - pruned_before == 4
            assert len(orch.store.packets_for(req.packet_id)) == 1  # a known request's packet stays
            stop(orch, scope)

    trio.run(main)


def test_orphan_commit_is_replayed_when_its_request_arrives(tmp_path):
    async def main():
        async with trio.open_nursery() as nursery:
            orch, scope = await start(nursery, tmp_path / "n", orphan_prune_interval_s=3600)
            req = request_packet()
            rid = req.packet_id
            early = Identity.generate()
            await orch.handle_packet(commit_packet(rid, early))  # overtook its request
            assert orch.get_request(rid) is None
            assert orch.orphan_packets == 1
            await orch.handle_packet(req)
            view = orch.get_request(rid)
            assert [c["node_id"] for c in view["commits"]] == [early.node_id]
            assert orch.orphan_packets == 0 == orch.store.count_orphan_packets()
            # No longer an orphan: even the harshest prune keeps it for the certificate.
            assert orch.store.prune_orphan_packets(max_age_ms=0, max_count=0) == 0
            assert len(orch.store.packets_for(rid)) == 1
            stop(orch, scope)

    trio.run(main)


def test_restart_rebuilds_the_count_from_the_store_and_applies_a_lower_cap(tmp_path):
    data = tmp_path / "n"

    async def main():
        async with trio.open_nursery() as nursery:
            orch, scope = await start(nursery, data, max_orphan_packets=5, orphan_prune_interval_s=3600)
            for _ in range(3):
                await orch.handle_packet(commit_packet(made_up_id()))
            stop(orch, scope)

            orch, scope = await start(nursery, data, max_orphan_packets=5, orphan_prune_interval_s=3600)
            assert orch.orphan_packets == 3
            for _ in range(5):
                await orch.handle_packet(commit_packet(made_up_id()))
            assert orch.orphan_packets == 5 == orch.store.count_orphan_packets()
            stop(orch, scope)

            orch, scope = await start(nursery, data, max_orphan_packets=2, orphan_prune_interval_s=3600)
            assert orch.orphan_packets == 2 == orch.store.count_orphan_packets()
            stop(orch, scope)

    trio.run(main)


def test_prune_deletes_the_oldest_orphans_first_and_never_known_requests(tmp_path):
    s = Store(tmp_path)
    s.add_request("k" * 64, b"frame", client_id="c" * 64, created_at=0, ending_at=1)
    s.add_packet("known", request_id="k" * 64, type="inference_commit", sender_id="a" * 64, frame=b"x")
    for i in range(5):
        s.add_packet(f"p{i}", request_id=f"{i}" * 64, type="inference_commit", sender_id="a" * 64, frame=b"x")
    assert s.count_orphan_packets() == 5
    assert s.prune_orphan_packets(max_age_ms=10**9, max_count=2) == 3
    assert not any(s.has_packet(f"p{i}") for i in range(3))
    assert s.has_packet("p3") and s.has_packet("p4") and s.has_packet("known")
    with pytest.raises(ValueError, match="max_count"):
        s.prune_orphan_packets(max_age_ms=0, max_count=-1)
    assert s.count_orphan_packets() == 2
    s.close()


def test_migration_flags_orphans_already_stored(tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS[:2])
        m.setattr(store_mod, "SCHEMA_VERSION", 2)
        old = Store(tmp_path)
        with old._lock:  # a version-2 database has no orphan column: insert as v2 code did
            old._db.execute(
                "INSERT INTO requests(request_id, frame, client_id, created_at, ending_at, received_at)"
                " VALUES (?,?,?,?,?,?)",
                ("k" * 64, b"frame", "c" * 64, 0, 1, 1),
            )
            for pid, rid in (("known", "k" * 64), ("lost", "u" * 64)):
                old._db.execute(
                    "INSERT INTO packets(packet_id, request_id, type, sender_id, frame, received_at)"
                    " VALUES (?,?,?,?,?,?)",
                    (pid, rid, "inference_commit", "a" * 64, b"x", 1),
                )
        old.close()
    s = Store(tmp_path)
    assert s.schema_version == store_mod.SCHEMA_VERSION
    assert s.count_orphan_packets() == 1
    assert s.prune_orphan_packets(max_age_ms=0, max_count=0) == 1
    assert s.has_packet("known") and not s.has_packet("lost")
    s.close()
    with sqlite3.connect(tmp_path / store_mod.DB_NAME) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("orphan_packet_ttl_s", -1),
        ("orphan_packet_ttl_s", 0),
        ("max_orphan_packets", 0),
        ("max_orphan_packets", -5),
    ],
)
def test_bad_orphan_settings_are_a_clear_error_naming_the_field(tmp_path, monkeypatch, field, value):
    with pytest.raises(ConfigError, match=field):
        load_settings(tmp_path, **{field: value})
    monkeypatch.setenv(f"RAKIS_{field.upper()}", str(value))
    with pytest.raises(ConfigError, match=field):
        load_settings(tmp_path)
    with pytest.raises(ValueError, match=field):
        OrchestratorConfig(**{field: value})


def test_orphan_settings_reach_the_orchestrator_config(tmp_path):
    (tmp_path / "config.toml").write_text("orphan_packet_ttl_s = 42.5\nmax_orphan_packets = 77\n")
    cfg = OrchestratorConfig.from_settings(load_settings(tmp_path))
    assert (cfg.orphan_packet_ttl_s, cfg.max_orphan_packets) == (42.5, 77)
    defaults = OrchestratorConfig.from_settings(load_settings(tmp_path / "empty"))
    assert (defaults.orphan_packet_ttl_s, defaults.max_orphan_packets) == (600.0, 10_000)
