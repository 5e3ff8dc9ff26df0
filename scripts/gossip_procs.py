"""`bench_gossip.py --processes N`: N gossip nodes, each its own OS process (and, as root
with iproute2, its own network namespace and address on one bridge: no loopback).

The parent writes a plan (keys, addresses, who dials whom, when to publish), starts N
children, waits, and merges what each child recorded: the wall-clock time it published
each of its messages and the time each message from the others arrived. All processes
share this machine's clock, so latency is arrival minus publish time.

Model-free: the nodes are `GossipNode`s publishing signed inference requests, the same
frames and validation as the daemon's gossip path, without engines.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node import wire  # noqa: E402
from node.identity import Identity  # noqa: E402
from node.netns import NetnsTopology  # noqa: E402
from node.p2p.config import local_config  # noqa: E402
from node.p2p.gossip import GossipNode  # noqa: E402
from node.p2p.libp2p_compat import peer_id_from_public_key  # noqa: E402

BASE_PORT = 4301


def _body(tag: str) -> wire.InferenceRequest:
    return wire.InferenceRequest(
        prompt=tag,
        accepted_models=["bench"],
        temperature=0.0,
        max_tokens=8,
        security_frame=wire.SecurityFrame(
            quorum=1, max_time_ms=60_000, sec_distance=0.1, sec_percentage=0.5, embedding_model="e"
        ),
    )


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def _child(plan: dict[str, Any], i: int, out: Path) -> None:
    me = plan["nodes"][i]
    ident = Identity.from_seed(bytes.fromhex(me["seed"]))
    cfg = local_config(
        listen_addrs=[f"/ip4/{me['host']}/tcp/{me['port']}"],
        bootstrap=[plan["nodes"][j]["addr"] for j in me["dials"]],
        status_interval_s=plan["status_interval"],
        heartbeat_s=1.0,
    )
    node = GossipNode(ident, cfg)
    sent: dict[str, int] = {}
    recv: dict[str, int] = {}

    async def collect() -> None:
        async for pkt in node.packets():
            if pkt.type is wire.PacketType.INFERENCE_REQUEST and pkt.packet_id not in recv:
                recv[pkt.packet_id] = time.time_ns()

    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        nursery.start_soon(collect)
        await trio.sleep(max(0.0, plan["start_at"] - time.time()))
        for k, at in enumerate(me["publish_at"]):
            await trio.sleep(max(0.0, at - time.time()))
            t = time.time_ns()
            pkt = await node.publish_body(_body(f"bench-{i}-{k}"))
            sent[pkt.packet_id] = t
        await trio.sleep(max(0.0, plan["end_at"] - time.time()))
        out.write_text(
            json.dumps(
                {
                    "sent": sent,
                    "recv": recv,
                    "counters": node.counters.as_dict(),
                    "topic_peers": len(node.topic_peers()),
                }
            )
        )
        nursery.cancel_scope.cancel()


def child_main(plan_path: str, i: int, out: str) -> int:
    plan = json.loads(Path(plan_path).read_text())
    trio.run(_child, plan, i, Path(out))
    return 0


def run(
    n: int,
    *,
    messages: int,
    rate: float,
    links: int,
    status_interval: float,
    drain: float,
    seed: int,
    netns: bool | None,
) -> dict[str, Any]:
    use_ns = (os.geteuid() == 0 and shutil.which("ip") is not None) if netns is None else netns
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="rakis-gossip-procs-"))
    topo = NetnsTopology.for_directory(work) if use_ns else None
    nodes = []
    for i in range(n):
        ident = Identity.generate()
        host = topo.address(i) if topo else "127.0.0.1"
        port = BASE_PORT if topo else BASE_PORT + i
        pid = str(peer_id_from_public_key(ident.public_key))
        earlier = list(range(i))
        nodes.append(
            {
                "seed": ident.seed.hex(),
                "host": host,
                "port": port,
                "addr": f"/ip4/{host}/tcp/{port}/p2p/{pid}",
                "dials": rng.sample(earlier, min(links, len(earlier))),
            }
        )
    setup_s = 10.0 + 0.4 * n
    start_at = time.time() + setup_s
    interval = 1.0 / rate if rate > 0 else 0.0
    for k in range(messages):
        nodes[k % n].setdefault("publish_at", []).append(start_at + k * interval)
    for node in nodes:
        node.setdefault("publish_at", [])
    end_at = start_at + messages * interval + drain
    plan = {"nodes": nodes, "start_at": start_at, "end_at": end_at, "status_interval": status_interval}
    (work / "plan.json").write_text(json.dumps(plan))
    procs = []
    try:
        if topo:
            topo.create(n)
        for i in range(n):
            prefix = ["ip", "netns", "exec", topo.namespace(i)] if topo else []
            cmd = prefix + [
                sys.executable,
                str(Path(__file__)),
                "--child",
                str(work / "plan.json"),
                str(i),
                str(work / f"out-{i}.json"),
            ]
            procs.append(
                subprocess.Popen(
                    cmd,
                    stdout=subprocess.DEVNULL,
                    stderr=open(work / f"err-{i}.log", "wb"),
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
            )
        deadline = end_at + 60
        for p in procs:
            try:
                p.wait(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if topo:
            topo.destroy()
    outs = []
    for i in range(n):
        f = work / f"out-{i}.json"
        outs.append(json.loads(f.read_text()) if f.exists() else None)
    sent: dict[str, tuple[int, int]] = {}
    for i, o in enumerate(outs):
        for pid, t in (o or {}).get("sent", {}).items():
            sent[pid] = (i, t)
    lat: list[float] = []
    delivered = 0
    for i, o in enumerate(outs):
        for pid, t in (o or {}).get("recv", {}).items():
            if pid in sent and sent[pid][0] != i:
                delivered += 1
                lat.append((t - sent[pid][1]) / 1e6)
    expected = len(sent) * (n - 1)
    return {
        "processes": n,
        "netns": bool(topo),
        "messages": len(sent),
        "rate": rate,
        "links": links,
        "expected": expected,
        "delivered": delivered,
        "delivered_ratio": round(delivered / expected, 4) if expected else 0.0,
        "p50_ms": round(_pct(lat, 0.5), 1),
        "p99_ms": round(_pct(lat, 0.99), 1),
        "max_ms": round(max(lat), 1) if lat else None,
        "children_reporting": sum(o is not None for o in outs),
        "outbound_dropped": sum((o or {}).get("counters", {}).get("outbound_dropped", 0) for o in outs),
        "work_dir": str(work),
    }


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--child":
    sys.exit(child_main(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
