"""A node behind a "NAT": its namespace routes to node-0 and nothing else. node-0 serves as
a circuit relay; the fenced node reserves a slot on it and announces its /p2p-circuit
address; the other node reaches it through node-0; and a quorum-3 request reaches
consensus with the fenced node as a member."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.e2e.netns_helpers import needs_netns, netns_testnet, peers, succeeded_request, tiny_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900), needs_netns]


def _tcp_peers(namespace: str, exclude: str) -> set[str]:
    """Remote addresses of established TCP connections in a namespace, but ``exclude``
    (the bridge: the test's own HTTP calls to the API)."""
    out = subprocess.run(
        ["ip", "netns", "exec", namespace, "ss", "-Htn", "state", "established"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = {line.split()[-1].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()}
    return found - {exclude}


def _can_connect(prefix: list[str], host: str, port: int) -> bool:
    code = f"import socket; socket.create_connection(({host!r}, {port}), timeout=2).close()"
    res = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, timeout=30)
    return res.returncode == 0


def test_a_node_reachable_only_through_a_relay_is_a_quorum_member(tmp_path, tiny_llama_dir):
    env = tiny_env(tiny_llama_dir, RAKIS_DHT_INTERVAL_S="2")
    with netns_testnet(tmp_path / "net", 3, env, relayed=(2,)) as (net, nodes):
        topo = net.topology()
        relay, direct, fenced = nodes
        # From the fenced namespace node-1 cannot be reached at all; node-0 can.
        assert not _can_connect(topo.exec_prefix(2), direct.host, direct.p2p_port)
        assert _can_connect(topo.exec_prefix(2), relay.host, relay.p2p_port)

        # node-1 reaches the fenced node through the relay: it is connected, and the
        # addresses the fenced node announces are circuit addresses through node-0.
        seen: dict[str, object] = {}
        end = time.monotonic() + 90
        while time.monotonic() < end:
            seen = {p["node_id"]: p for p in peers(direct)}
            rec = seen.get(fenced.node_id)
            if rec and rec.get("connected") and rec.get("announce_addrs"):
                break
            time.sleep(1)
        rec = seen.get(fenced.node_id)
        assert rec and rec.get("connected"), seen
        assert rec["announce_addrs"] and all(
            a.startswith(relay.multiaddr + "/p2p-circuit/p2p/") for a in rec["announce_addrs"]
        ), rec

        rid, views = succeeded_request(direct, nodes, quorum=3)
        members = {m["node_id"] for m in views[relay.name]["members"]}
        assert fenced.node_id in members and members == {n.node_id for n in nodes}, views[relay.name]

        # Every TCP connection the fenced node holds goes to the relay.
        assert _tcp_peers(topo.namespace(2), topo.bridge_address) == {relay.host}
