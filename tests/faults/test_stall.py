"""The stall: after a restart plus a SIGSTOPped neighbour, gossip between every pair of
nodes must come back. Three real daemons on 127.0.0.1; ten rounds of: freeze c, restart b
(it dials c, which cannot answer), thaw c; then every node must again hear every other
node's fresh `peer_status` heartbeat and hold a connection to it."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.daemon_helpers import Daemon, DaemonOptions, start_network, stop_all

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

ROUNDS = 10


def _hears(listener: Daemon, speaker: Daemon, since_ms: int) -> bool:
    try:
        peers = listener.get("/v1/peers").json()["peers"]
    except Exception:  # noqa: BLE001 - a daemon coming up
        return False
    rec = next((p for p in peers if p.get("node_id") == speaker.node_id), None)
    return bool(rec and rec.get("connected") and (rec.get("last_status_ts_ms") or 0) > since_ms)


def test_gossip_recovers_after_restart_with_a_frozen_neighbour(tmp_path: Path, daemon_options: DaemonOptions):
    daemons = start_network(tmp_path / "stall", daemon_options)
    try:
        a, b, c = daemons
        a.bootstrap, b.bootstrap, c.bootstrap = [b.addr, c.addr], [a.addr, c.addr], [a.addr, b.addr]
        recovery: list[float] = []
        for i in range(ROUNDS):
            c.signal(signal.SIGSTOP)
            try:
                b.kill()
                b.start().wait_ready()
                time.sleep(2.0)  # b keeps trying c while c is frozen
            finally:
                c.signal(signal.SIGCONT)
            thawed = time.time_ns() // 1_000_000
            end = time.monotonic() + 45
            pairs = [(x, y) for x in daemons for y in daemons if x is not y]
            while time.monotonic() < end:
                missing = [(x.data_dir.name, y.data_dir.name) for x, y in pairs if not _hears(y, x, thawed)]
                if not missing:
                    break
                time.sleep(0.5)
            assert not missing, f"round {i}: no fresh heartbeat (speaker, listener): {missing}"
            recovery.append(time.time() - thawed / 1000)
        print(f"recovered every round; seconds after SIGCONT: {[round(r, 1) for r in recovery]}")
    finally:
        stop_all(daemons)
