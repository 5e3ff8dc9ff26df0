"""Off the loopback: a testnet whose nodes are separate hosts (a network namespace and an
address each, one bridge between them) reaches consensus, and nothing gossips over
127.0.0.1. ``down`` removes every namespace, link and bridge it made; a node can be cut
off and healed.

The nodes serve the tiny random Llama (fast to load) and the real MiniLM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import httpx
import pytest

from node.testnet import Testnet, _alive
from tests.daemon_helpers import make_frame

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None, reason="network namespaces need root and iproute2"
    ),
]

TINY = "tiny-llama"


@pytest.fixture(scope="module")
def netns_testnet(tmp_path_factory, tiny_llama_dir):
    net = Testnet(tmp_path_factory.mktemp("netns") / "net")
    env = {
        "RAKIS_MODEL_PATHS": json.dumps({TINY: str(tiny_llama_dir)}),
        "RAKIS_LLM_MODELS": json.dumps({TINY: 1, "smollm2-135m-instruct": 0}),
        "RAKIS_REVEAL_GRACE_S": "0.5",
    }
    try:
        nodes = net.up(3, torch_threads=1, env=env, timeout=420, netns=True)
        yield net, nodes
    finally:
        net.down(timeout=30)
        for node in net.nodes():  # nothing may outlive the test
            rec = node.read_pid()
            if rec is not None and _alive(*rec):
                os.kill(rec[0], signal.SIGKILL)
        net.topology().destroy()


def _gossip_peers(namespace: str) -> set[str]:
    """Remote addresses of the established TCP connections inside a namespace."""
    out = subprocess.run(
        ["ip", "netns", "exec", namespace, "ss", "-Htn", "state", "established"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split()[-1].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()}


def test_namespaced_nodes_reach_consensus_without_loopback(netns_testnet):
    net, nodes = netns_testnet
    topo = net.topology()
    assert [n.host for n in nodes] == [topo.address(i) for i in range(3)]
    assert all(n.api_url.startswith(f"http://{topo.subnet}.") for n in nodes)
    # 30 s to commit: gossip between fresh namespaced daemons was seen to take ~5 s per hop
    # under the full suite, which pushed a commit past a 10 s window.
    frame = make_frame("Name a planet.", model=TINY, quorum=3, max_time_ms=120_000, commit_window_ms=30_000)
    with httpx.Client(timeout=10) as http:
        r = http.post(nodes[2].api_url + "/v1/requests", content=frame, headers={"content-type": "application/octet-stream"})
        assert r.status_code == 200, r.text
        rid = r.json()["request_id"]
        views = {}
        end = time.monotonic() + 180
        while len(views) < 3 and time.monotonic() < end:
            for n in nodes:
                v = http.get(f"{n.api_url}/v1/requests/{rid}").json()
                if v.get("state") in ("succeeded", "failed", "expired"):
                    views[n.name] = v
            time.sleep(1)
    assert len(views) == 3, views
    assert {v["state"] for v in views.values()} == {"succeeded"}, views
    assert len({v["answer"] for v in views.values()}) == 1
    assert {m["node_id"] for m in views["node-0"]["members"]} == {n.node_id for n in nodes}
    for i, n in enumerate(nodes):
        info = n.node_json()
        assert info is not None and all("/ip4/127.0.0.1/" not in a for a in info["listen_addrs"]), info
        peers = _gossip_peers(topo.namespace(i))
        assert peers and all(p.startswith(topo.subnet + ".") for p in peers), peers


def test_a_partitioned_node_loses_its_peers_and_heal_brings_them_back(netns_testnet):
    net, nodes = netns_testnet
    topo = net.topology()
    net.partition("node-1")
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and _gossip_peers(topo.namespace(0)) & {nodes[1].host}:
            time.sleep(1)
        with pytest.raises(httpx.HTTPError):
            httpx.get(nodes[1].api_url + "/healthz", timeout=2)
    finally:
        net.heal("node-1")
    with httpx.Client(timeout=5) as http:
        end = time.monotonic() + 90
        while time.monotonic() < end:
            try:
                if len(http.get(nodes[1].api_url + "/v1/peers").json()["peers"]) >= 2:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert len(http.get(nodes[1].api_url + "/v1/peers").json()["peers"]) >= 2


def test_down_removes_every_namespace_link_and_bridge(tmp_path):
    net = Testnet(tmp_path / "net")
    topo = net.topology()
    topo.create(2)
    assert len(topo.existing_namespaces()) == 2
    removed = topo.destroy()
    assert set(removed) >= {topo.namespace(0), topo.namespace(1), topo.bridge}
    assert topo.existing_namespaces() == []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert topo.prefix not in links
