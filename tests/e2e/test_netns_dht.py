"""DHT discovery between separate hosts: five namespaced daemons, each told only node-0's
address, all end up connected to each other, and a request sent to the last one reaches
consensus."""

from __future__ import annotations

import time

import pytest

from tests.e2e.netns_helpers import needs_netns, netns_testnet, peers, succeeded_request, tiny_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900), needs_netns]


def test_five_nodes_bootstrapped_to_node0_find_each_other_through_the_dht(tmp_path, tiny_llama_dir):
    env = tiny_env(tiny_llama_dir, RAKIS_DHT_INTERVAL_S="2")
    with netns_testnet(tmp_path / "net", 5, env, bootstrap="first") as (net, nodes):
        ids = {n.node_id for n in nodes}
        t0 = time.monotonic()
        connected: dict[str, set[str]] = {}
        while time.monotonic() - t0 < 60:
            connected = {n.name: {p["node_id"] for p in peers(n) if p.get("connected")} for n in nodes}
            if all(connected[n.name] == ids - {n.node_id} for n in nodes):
                break
            time.sleep(1)
        assert all(connected[n.name] == ids - {n.node_id} for n in nodes), connected
        print(f"full mesh through the DHT {time.monotonic() - t0:.1f} s after every node was ready")
        succeeded_request(nodes[-1], nodes, quorum=3)
