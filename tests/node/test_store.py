"""Store: migrations, WAL, durability across a process kill, idempotent writes."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from node import store as store_mod
from node.store import SCHEMA_VERSION, Store, StoreError


def _add(s: Store, rid: str = "r1") -> bool:
    return s.add_request(rid, b"frame-" + rid.encode(), client_id="c" * 64, created_at=1000, ending_at=61000)


def test_fresh_database_is_wal_and_migrated(tmp_path):
    s = Store(tmp_path)
    assert s.schema_version == SCHEMA_VERSION
    with sqlite3.connect(s.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s.close()


def test_newer_schema_is_refused(tmp_path):
    s = Store(tmp_path)
    s.close()
    with sqlite3.connect(tmp_path / store_mod.DB_NAME) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 5}")
    with pytest.raises(StoreError, match="newer than this rakis"):
        Store(tmp_path)


def test_migrations_run_in_order_and_once(tmp_path, monkeypatch):
    s = Store(tmp_path)
    _add(s)
    s.close()
    calls = []

    def m2(db):
        calls.append(2)
        db.execute("ALTER TABLE requests ADD COLUMN note TEXT")

    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, m2])
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    s = Store(tmp_path)
    assert s.schema_version == SCHEMA_VERSION + 1
    assert s.get_request("r1") is not None  # data kept across the migration
    s.close()
    s = Store(tmp_path)
    s.close()
    assert calls == [2]


def test_failed_migration_rolls_back(tmp_path, monkeypatch):
    def broken(db):
        db.execute("CREATE TABLE half_done(x)")
        raise RuntimeError("boom")

    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, broken])
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(RuntimeError):
        Store(tmp_path)
    with sqlite3.connect(tmp_path / store_mod.DB_NAME) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    assert "half_done" not in names


def test_requests_are_idempotent_and_finish_once(tmp_path):
    s = Store(tmp_path)
    assert _add(s) is True
    assert _add(s) is False
    assert [r.request_id for r in s.pending_requests()] == ["r1"]
    s.set_stage("r1", "committed")
    assert s.get_request("r1").stage == "committed"
    members = [{"inference_id": "i1", "node_id": "n1"}]
    assert s.finish_request(
        "r1", state="succeeded", reason=None, answer="42", members=members, certificate=b"{}"
    )
    assert not s.finish_request("r1", state="failed", reason="expired", answer=None, members=[])
    r = s.get_request("r1")
    assert (r.state, r.answer, r.members, r.final) == ("succeeded", "42", members, True)
    assert s.pending_requests() == []
    with pytest.raises(ValueError, match="state must be one of"):
        s.finish_request("r1", state="weird", reason=None, answer=None, members=[])
    s.close()


def test_inference_upsert_keeps_fields(tmp_path):
    s = Store(tmp_path)
    s.upsert_inference("r1", "i1", state="queued", model="m")
    s.upsert_inference("r1", "i1", state="inferred", output="hello", embedding=b"\0" * 8, b=b"\1")
    s.upsert_inference("r1", "i1", state="committed", commit=b"c" * 32)
    inf = s.get_inference("r1")
    assert (inf.state, inf.model, inf.output, inf.b, inf.commit) == (
        "committed",
        "m",
        "hello",
        b"\1",
        b"c" * 32,
    )
    assert [i.request_id for i in s.inferences_in_state("committed")] == ["r1"]
    s.close()


def test_packets_and_reputation(tmp_path):
    s = Store(tmp_path)
    assert s.add_packet("p1", request_id="r1", type="inference_commit", sender_id="n1", frame=b"x")
    assert not s.add_packet("p1", request_id="r1", type="inference_commit", sender_id="n1", frame=b"x")
    s.add_packet("p2", request_id="r1", type="inference_reveal", sender_id="n1", frame=b"y", own=True)
    assert [p["packet_id"] for p in s.packets_for("r1")] == ["p1", "p2"]
    assert [p["packet_id"] for p in s.packets_for("r1", "inference_reveal")] == ["p2"]
    assert s.has_packet("p2") and not s.has_packet("p3")
    assert s.record_reputation("r1", "n1", accepted=1, in_cluster=1)
    assert not s.record_reputation("r1", "n1", accepted=1)  # once per (request, peer)
    s.record_reputation("r2", "n1", rejected=1)
    assert s.reputation()["n1"] == {
        "accepted": 1,
        "rejected": 1,
        "missing": 0,
        "in_cluster": 1,
        "outlier": 0,
        "failed_recheck": 0,
    }
    with pytest.raises(ValueError, match="unknown reputation fields"):
        s.record_reputation("r3", "n1", bogus=1)
    s.save_quorum_state("r1", b"state")
    assert s.load_quorum_state("r1") == b"state"
    s.close()


def test_writes_survive_sigkill(tmp_path):
    """A write that returned is on disk even if the process dies at once."""
    code = textwrap.dedent(
        f"""
        import os, signal
        from node.store import Store
        s = Store({str(tmp_path)!r})
        s.add_request("rk", b"f", client_id="c", created_at=1, ending_at=2)
        s.upsert_inference("rk", "ik", state="committed", output="out", b=b"b", commit=b"c")
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd(), timeout=60)
    assert proc.returncode == -9
    s = Store(tmp_path)
    assert s.get_request("rk") is not None
    assert s.get_inference("rk").state == "committed"
    s.close()


def test_unwritable_data_dir_gives_clear_error(tmp_path):
    target = tmp_path / "file"
    target.write_text("not a dir")
    with pytest.raises(StoreError, match="data directory"):
        Store(target / "sub")
