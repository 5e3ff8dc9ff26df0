"""SQLite persistence for the daemon: what a node must not lose across a crash.

A node promises things to the network (a commit it must later open, a request it
accepted from a client), so every such fact is written, with ``synchronous=FULL``,
before it is acknowledged or published. WAL mode lets the HTTP API read while the
orchestrator writes. Transactions are short, so they run inline on the trio loop
(a few hundred microseconds plus one fsync); nothing here holds a transaction
across an ``await``.

The schema is versioned with ``PRAGMA user_version`` and an ordered list of
migration functions; a database newer than this code is refused instead of being
misread.

Why this module is long: one SQLite schema and its migrations, with one method per
query; every durable fact of the node goes through this one class and its one lock.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node import clock

__all__ = [
    "SCHEMA_VERSION",
    "OwnInference",
    "RequestRow",
    "Store",
    "StoreError",
]

DB_NAME = "rakis.sqlite3"

FINAL_STATES = ("succeeded", "failed", "expired")


class StoreError(Exception):
    """The data directory or database cannot be used (read-only, corrupt, too new)."""


def _run_script(db: sqlite3.Connection, script: str) -> None:
    """Run DDL statement by statement: ``executescript`` would commit the open
    migration transaction first, so a failing migration could not roll back."""
    for stmt in script.split(";"):
        if stmt.strip():
            db.execute(stmt)


def _m1_initial(db: sqlite3.Connection) -> None:
    _run_script(
        db,
        """
        CREATE TABLE requests (
            request_id   TEXT PRIMARY KEY,
            frame        BLOB NOT NULL,
            client_id    TEXT NOT NULL,
            created_at   INTEGER NOT NULL,      -- unix ms, from the signed packet
            ending_at    INTEGER NOT NULL,      -- unix ms, created_at + max_time_ms
            received_at  INTEGER NOT NULL,      -- unix ms, local clock
            state        TEXT NOT NULL DEFAULT 'pending',
            stage        TEXT NOT NULL DEFAULT 'queued',
            reason       TEXT,
            answer       TEXT,
            members      TEXT,                  -- JSON list
            result       TEXT,                  -- JSON object (extra result detail)
            certificate  BLOB,                  -- JSON bytes
            finished_at  INTEGER
        );
        CREATE INDEX requests_state ON requests(state, ending_at);
        CREATE INDEX requests_received ON requests(received_at);

        CREATE TABLE inferences (
            request_id   TEXT PRIMARY KEY,      -- one own inference per request
            inference_id TEXT NOT NULL,
            model        TEXT,
            state        TEXT NOT NULL,         -- queued|inferring|inferred|committed|revealed|failed|skipped
            output       TEXT,
            embedding    BLOB,                  -- float32 bytes
            b            BLOB,
            commit_hash  BLOB,
            reason       TEXT,
            updated_at   INTEGER NOT NULL
        );

        CREATE TABLE packets (
            packet_id    TEXT PRIMARY KEY,
            request_id   TEXT NOT NULL,
            type         TEXT NOT NULL,
            sender_id    TEXT NOT NULL,
            frame        BLOB NOT NULL,
            own          INTEGER NOT NULL DEFAULT 0,
            received_at  INTEGER NOT NULL
        );
        CREATE INDEX packets_request ON packets(request_id, received_at);

        CREATE TABLE quorum_states (
            request_id   TEXT PRIMARY KEY,
            state        BLOB NOT NULL,
            updated_at   INTEGER NOT NULL
        );

        CREATE TABLE reputation (
            node_id      TEXT PRIMARY KEY,
            accepted     INTEGER NOT NULL DEFAULT 0,
            rejected     INTEGER NOT NULL DEFAULT 0,
            missing      INTEGER NOT NULL DEFAULT 0,
            in_cluster   INTEGER NOT NULL DEFAULT 0,
            outlier      INTEGER NOT NULL DEFAULT 0,
            updated_at   INTEGER NOT NULL
        );

        CREATE TABLE reputation_events (
            request_id   TEXT NOT NULL,
            node_id      TEXT NOT NULL,
            PRIMARY KEY (request_id, node_id)
        );
        """,
    )


def _m2_outbox(db: sqlite3.Connection) -> None:
    # Our own packets are written before they are published; `sent` tells a restarted
    # node which ones never left (received packets are "sent" by definition).
    db.execute("ALTER TABLE packets ADD COLUMN sent INTEGER NOT NULL DEFAULT 1")
    db.execute("CREATE INDEX packets_unsent ON packets(sent) WHERE sent = 0")


def _m3_orphans(db: sqlite3.Connection) -> None:
    # A packet whose request this node has not seen ("orphan") is kept only for a while
    # and only up to a cap. The flag is set on insert and cleared when the request is
    # stored, so counting and pruning read a small partial index instead of anti-joining
    # every packet the node ever kept against `requests`.
    db.execute("ALTER TABLE packets ADD COLUMN orphan INTEGER NOT NULL DEFAULT 0")
    db.execute(
        "UPDATE packets SET orphan=1 WHERE NOT EXISTS"
        " (SELECT 1 FROM requests r WHERE r.request_id = packets.request_id)"
    )
    db.execute("CREATE INDEX packets_orphan ON packets(received_at) WHERE orphan = 1")


def _m4_bans_and_rechecks(db: sqlite3.Connection) -> None:
    # Bans outlive a restart (a banned peer must not get a clean slate by waiting for the
    # node to restart). `kind` is "peer" (a libp2p connection that forwarded garbage) or
    # "sender" (a signing key whose outputs failed re-checks). A failed re-check also
    # counts in the peer's reputation. Our own inference keeps the weights hash it was
    # made with, so a late reveal after a restart names the same weights as the commit.
    _run_script(
        db,
        """
        CREATE TABLE bans (
            kind       TEXT NOT NULL,
            key        TEXT NOT NULL,
            until_ms   INTEGER NOT NULL,
            reason     TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            PRIMARY KEY (kind, key)
        );
        ALTER TABLE reputation ADD COLUMN failed_recheck INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE inferences ADD COLUMN model_hash TEXT;
        ALTER TABLE inferences ADD COLUMN output_tokens TEXT;
        """
    )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _m1_initial,
    _m2_outbox,
    _m3_orphans,
    _m4_bans_and_rechecks,
]
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class RequestRow:
    request_id: str
    frame: bytes
    client_id: str
    created_at: int
    ending_at: int
    received_at: int
    state: str
    stage: str
    reason: str | None
    answer: str | None
    members: list[dict[str, Any]]
    result: dict[str, Any]
    certificate: bytes | None
    finished_at: int | None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(frozen=True)
class OwnInference:
    request_id: str
    inference_id: str
    model: str | None
    model_hash: str | None
    state: str
    output: str | None
    output_tokens: list[int] | None
    embedding: bytes | None
    b: bytes | None
    commit: bytes | None
    reason: str | None
    updated_at: int


_REP_FIELDS = ("accepted", "rejected", "missing", "in_cluster", "outlier", "failed_recheck")
BAN_KINDS = ("peer", "sender")


class Store:
    """One SQLite database in the node's data directory.

    Thread-safe through one lock: the trio loop writes, the API and engine threads
    may read. Every write method commits before it returns.
    """

    def __init__(self, data_dir: Path | str, *, filename: str = DB_NAME) -> None:
        self.data_dir = Path(data_dir)
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create data directory {self.data_dir}: {e}") from e
        self.path = self.data_dir / filename
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
            self._db.row_factory = sqlite3.Row
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"could not switch {self.path} to WAL mode (got {mode!r})")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot open database {self.path}: {e}") from e

    # -- life cycle -----------------------------------------------------------------

    def _migrate(self) -> None:
        with self._lock:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"database {self.path} has schema version {version}, newer than this rakis "
                    f"(supports up to {SCHEMA_VERSION}); upgrade rakis or use another data dir"
                )
            for i in range(version, SCHEMA_VERSION):
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    MIGRATIONS[i](self._db)
                    self._db.execute(f"PRAGMA user_version={i + 1}")
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:
                pass
            self._db.close()

    def _write(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, tuple(params))

    def _tx(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._db)
                self._db.execute("COMMIT")
                return out
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- requests -------------------------------------------------------------------

    def add_request(
        self, request_id: str, frame: bytes, *, client_id: str, created_at: int, ending_at: int
    ) -> bool:
        """Insert a request if new; True when it was new (idempotent on duplicates).

        Packets that arrived before it stop being orphans in the same transaction, so
        the prune can never delete a packet whose request is stored."""

        def tx(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "INSERT OR IGNORE INTO requests(request_id, frame, client_id, created_at, ending_at,"
                " received_at) VALUES (?,?,?,?,?,?)",
                (request_id, bytes(frame), client_id, int(created_at), int(ending_at), clock.now_ms()),
            )
            if cur.rowcount != 1:
                return False
            db.execute("UPDATE packets SET orphan=0 WHERE request_id=? AND orphan=1", (request_id,))
            return True

        return bool(self._tx(tx))

    def has_request(self, request_id: str) -> bool:
        """Whether the request is stored (pending or final); a primary-key probe."""
        with self._lock:
            return (
                self._db.execute("SELECT 1 FROM requests WHERE request_id=?", (request_id,)).fetchone()
                is not None
            )

    def get_request(self, request_id: str) -> RequestRow | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM requests WHERE request_id=?", (request_id,)).fetchone()
        return _request_row(row) if row else None

    def list_requests(self, limit: int = 50) -> list[RequestRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM requests ORDER BY received_at DESC LIMIT ?", (int(limit),)
            ).fetchall()
        return [_request_row(r) for r in rows]

    def requests_since(self, since_ms: int, limit: int) -> list[RequestRow]:
        """Requests created at or after ``since_ms`` (signed time), newest first: what
        history sync serves (``node.p2p.sync``)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM requests WHERE created_at >= ? ORDER BY created_at DESC LIMIT ?",
                (int(since_ms), int(limit)),
            ).fetchall()
        return [_request_row(r) for r in rows]

    def pending_requests(self) -> list[RequestRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM requests WHERE state='pending' ORDER BY ending_at"
            ).fetchall()
        return [_request_row(r) for r in rows]

    def set_stage(self, request_id: str, stage: str) -> None:
        self._write("UPDATE requests SET stage=? WHERE request_id=? AND state='pending'", (stage, request_id))

    def finish_request(
        self,
        request_id: str,
        *,
        state: str,
        reason: str | None,
        answer: str | None,
        members: list[dict[str, Any]],
        result: dict[str, Any] | None = None,
        certificate: bytes | None = None,
    ) -> bool:
        """Record the final outcome once; a request already final is left unchanged."""
        if state not in FINAL_STATES:
            raise ValueError(f"state must be one of {FINAL_STATES}, got {state!r}")
        cur = self._write(
            "UPDATE requests SET state=?, stage='done', reason=?, answer=?, members=?, result=?,"
            " certificate=?, finished_at=? WHERE request_id=? AND state='pending'",
            (
                state,
                reason,
                answer,
                json.dumps(members),
                json.dumps(result or {}),
                certificate,
                clock.now_ms(),
                request_id,
            ),
        )
        return cur.rowcount == 1

    # -- own inferences -------------------------------------------------------------

    def upsert_inference(
        self,
        request_id: str,
        inference_id: str,
        *,
        state: str,
        model: str | None = None,
        model_hash: str | None = None,
        output: str | None = None,
        output_tokens: Sequence[int] | None = None,
        embedding: bytes | None = None,
        b: bytes | None = None,
        commit: bytes | None = None,
        reason: str | None = None,
    ) -> None:
        """Create or update this node's inference; None leaves a stored field as is."""
        self._write(
            "INSERT INTO inferences(request_id, inference_id, model, model_hash, state, output, output_tokens,"
            " embedding, b, commit_hash, reason, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(request_id) DO UPDATE SET"
            " state=excluded.state,"
            " model=COALESCE(excluded.model, model),"
            " model_hash=COALESCE(excluded.model_hash, model_hash),"
            " output=COALESCE(excluded.output, output),"
            " output_tokens=COALESCE(excluded.output_tokens, output_tokens),"
            " embedding=COALESCE(excluded.embedding, embedding),"
            " b=COALESCE(excluded.b, b),"
            " commit_hash=COALESCE(excluded.commit_hash, commit_hash),"
            " reason=COALESCE(excluded.reason, reason),"
            " updated_at=excluded.updated_at",
            (
                request_id,
                inference_id,
                model,
                model_hash,
                state,
                output,
                None if output_tokens is None else json.dumps([int(t) for t in output_tokens]),
                embedding,
                b,
                commit,
                reason,
                clock.now_ms(),
            ),
        )

    def get_inference(self, request_id: str) -> OwnInference | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM inferences WHERE request_id=?", (request_id,)).fetchone()
        return _inference_row(row) if row else None

    def inferences_in_state(self, *states: str) -> list[OwnInference]:
        marks = ",".join("?" * len(states))
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM inferences WHERE state IN ({marks}) ORDER BY updated_at", states
            ).fetchall()
        return [_inference_row(r) for r in rows]

    # -- packets --------------------------------------------------------------------

    def add_packet(
        self,
        packet_id: str,
        *,
        request_id: str,
        type: str,
        sender_id: str,
        frame: bytes,
        own: bool = False,
    ) -> bool:
        """Keep a packet needed for a certificate; True when new.

        A packet for a request not stored here is flagged as an orphan (see
        :meth:`prune_orphan_packets`)."""
        cur = self._write(
            "INSERT OR IGNORE INTO packets(packet_id, request_id, type, sender_id, frame, own, received_at,"
            " sent, orphan) SELECT ?,?,?,?,?,?,?,?,"
            " NOT EXISTS (SELECT 1 FROM requests WHERE request_id=?)",
            (
                packet_id,
                request_id,
                str(type),
                sender_id,
                bytes(frame),
                int(own),
                clock.now_ms(),
                int(not own),
                request_id,
            ),
        )
        return cur.rowcount == 1

    def count_orphan_packets(self) -> int:
        """Packets whose request is not stored (at most the cap plus one prune interval)."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM packets WHERE orphan=1").fetchone()[0])

    def prune_orphan_packets(self, *, max_age_ms: int, max_count: int, now_ms: int | None = None) -> int:
        """Delete orphans received more than ``max_age_ms`` ago, then the oldest ones
        beyond ``max_count``; return how many were deleted. Packets of stored requests
        are never touched."""
        if max_age_ms < 0 or max_count < 0:
            raise ValueError(f"max_age_ms and max_count must be >= 0, got {max_age_ms}, {max_count}")
        cutoff = (clock.now_ms() if now_ms is None else int(now_ms)) - int(max_age_ms)

        def tx(db: sqlite3.Connection) -> int:
            aged = db.execute("DELETE FROM packets WHERE orphan=1 AND received_at < ?", (cutoff,)).rowcount
            over = db.execute(
                "DELETE FROM packets WHERE rowid IN (SELECT rowid FROM packets WHERE orphan=1"
                " ORDER BY received_at DESC, rowid DESC LIMIT -1 OFFSET ?)",
                (int(max_count),),
            ).rowcount
            return aged + over

        return int(self._tx(tx))

    def mark_sent(self, packet_id: str) -> None:
        self._write("UPDATE packets SET sent=1 WHERE packet_id=?", (packet_id,))

    def unsent_packets(self, request_id: str | None = None) -> list[dict[str, Any]]:
        """Own packets persisted but not yet published (oldest first)."""
        sql = "SELECT * FROM packets WHERE sent=0"
        params: list[Any] = []
        if request_id is not None:
            sql += " AND request_id=?"
            params.append(request_id)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY received_at, rowid", params).fetchall()
        return [_packet_row(r) for r in rows]

    def packets_for(self, request_id: str, *types: str) -> list[dict[str, Any]]:
        sql = "SELECT * FROM packets WHERE request_id=?"
        params: list[Any] = [request_id]
        if types:
            sql += f" AND type IN ({','.join('?' * len(types))})"
            params.extend(types)
        sql += " ORDER BY received_at, rowid"
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [_packet_row(r) for r in rows]

    def has_packet(self, packet_id: str) -> bool:
        with self._lock:
            return (
                self._db.execute("SELECT 1 FROM packets WHERE packet_id=?", (packet_id,)).fetchone()
                is not None
            )

    # -- quorum states --------------------------------------------------------------

    def save_quorum_state(self, request_id: str, state: bytes) -> None:
        self._write(
            "INSERT INTO quorum_states(request_id, state, updated_at) VALUES (?,?,?)"
            " ON CONFLICT(request_id) DO UPDATE SET state=excluded.state, updated_at=excluded.updated_at",
            (request_id, bytes(state), clock.now_ms()),
        )

    def load_quorum_state(self, request_id: str) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT state FROM quorum_states WHERE request_id=?", (request_id,)
            ).fetchone()
        return bytes(row[0]) if row else None

    # -- reputation -----------------------------------------------------------------

    def record_reputation(self, request_id: str, node_id: str, **deltas: int) -> bool:
        """Add counts for one peer's part in one request, once per (request, peer)."""
        bad = set(deltas) - set(_REP_FIELDS)
        if bad:
            raise ValueError(f"unknown reputation fields {sorted(bad)}; allowed: {_REP_FIELDS}")

        def tx(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                "INSERT OR IGNORE INTO reputation_events(request_id, node_id) VALUES (?,?)",
                (request_id, node_id),
            )
            if cur.rowcount != 1:
                return False
            db.execute(
                "INSERT OR IGNORE INTO reputation(node_id, updated_at) VALUES (?,?)", (node_id, clock.now_ms())
            )
            sets = ", ".join(f"{k}={k}+?" for k in deltas)
            db.execute(
                f"UPDATE reputation SET {sets + ', ' if sets else ''}updated_at=? WHERE node_id=?",
                (*[int(v) for v in deltas.values()], clock.now_ms(), node_id),
            )
            return True

        return bool(self._tx(tx))

    def save_ban(self, kind: str, key: str, *, until_ms: int, reason: str) -> None:
        """Record (or extend) a ban; the later end wins when one exists already."""
        if kind not in BAN_KINDS:
            raise ValueError(f"ban kind must be one of {BAN_KINDS}, got {kind!r}")
        self._write(
            "INSERT INTO bans(kind, key, until_ms, reason, created_at) VALUES (?,?,?,?,?)"
            " ON CONFLICT(kind, key) DO UPDATE SET until_ms=max(until_ms, excluded.until_ms),"
            " reason=excluded.reason",
            (kind, key, int(until_ms), reason[:200], clock.now_ms()),
        )

    def active_bans(self, kind: str, *, now_ms: int | None = None) -> dict[str, int]:
        """key -> ban end (ms) for bans of ``kind`` still running; ended ones are deleted."""
        now = clock.now_ms() if now_ms is None else int(now_ms)

        def tx(db: sqlite3.Connection) -> dict[str, int]:
            db.execute("DELETE FROM bans WHERE until_ms <= ?", (now,))
            rows = db.execute("SELECT key, until_ms FROM bans WHERE kind=?", (kind,)).fetchall()
            return {r["key"]: int(r["until_ms"]) for r in rows}

        return dict(self._tx(tx))

    def reputation(self, node_id: str | None = None) -> dict[str, dict[str, int]]:
        with self._lock:
            if node_id is None:
                rows = self._db.execute("SELECT * FROM reputation").fetchall()
            else:
                rows = self._db.execute("SELECT * FROM reputation WHERE node_id=?", (node_id,)).fetchall()
        return {r["node_id"]: {k: int(r[k]) for k in _REP_FIELDS} for r in rows}


def _packet_row(r: sqlite3.Row) -> dict[str, Any]:
    return {
        "packet_id": r["packet_id"],
        "request_id": r["request_id"],
        "type": r["type"],
        "sender_id": r["sender_id"],
        "frame": bytes(r["frame"]),
        "own": bool(r["own"]),
        "sent": bool(r["sent"]),
        "received_at": r["received_at"],
    }


def _request_row(r: sqlite3.Row) -> RequestRow:
    return RequestRow(
        request_id=r["request_id"],
        frame=bytes(r["frame"]),
        client_id=r["client_id"],
        created_at=r["created_at"],
        ending_at=r["ending_at"],
        received_at=r["received_at"],
        state=r["state"],
        stage=r["stage"],
        reason=r["reason"],
        answer=r["answer"],
        members=json.loads(r["members"]) if r["members"] else [],
        result=json.loads(r["result"]) if r["result"] else {},
        certificate=bytes(r["certificate"]) if r["certificate"] is not None else None,
        finished_at=r["finished_at"],
    )


def _inference_row(r: sqlite3.Row) -> OwnInference:
    return OwnInference(
        request_id=r["request_id"],
        inference_id=r["inference_id"],
        model=r["model"],
        model_hash=r["model_hash"],
        state=r["state"],
        output=r["output"],
        output_tokens=json.loads(r["output_tokens"]) if r["output_tokens"] is not None else None,
        embedding=bytes(r["embedding"]) if r["embedding"] is not None else None,
        b=bytes(r["b"]) if r["b"] is not None else None,
        commit=bytes(r["commit_hash"]) if r["commit_hash"] is not None else None,
        reason=r["reason"],
        updated_at=r["updated_at"],
    )
