"""Gossip benchmark: N real libp2p nodes on 127.0.0.1 in one process.

Builds a random connected topology (each node dials `--links` random earlier nodes),
waits for the meshes to form, then publishes `--messages` signed inference requests
round-robin from all nodes at `--rate` messages/s (0 = as fast as possible) and records,
per node, when each message arrives. Everything runs in one trio loop, so publish and
receive times share one clock.

All N nodes share one Python thread (and here a shared 2-core machine), so the
numbers measure py-libp2p's per-message CPU cost more than the network: every
delivery costs each receiving node a few ms of CPU. `--status-interval` sets the
background peer_status traffic (N / interval messages/s network-wide).

Reports delivery ratio (deliveries / (messages x (N-1))), duplicates, latency p50/p99
and throughput; with --json the last line is a JSON object.

    .venv/bin/python scripts/bench_gossip.py --nodes 10
    .venv/bin/python scripts/bench_gossip.py --nodes 20 --messages 400 --rate 0 --json

With ``--processes N`` the N nodes are separate OS processes instead (in network
namespaces of their own when run as root with iproute2; see scripts/gossip_procs.py):

    sudo .venv/bin/python scripts/bench_gossip.py --processes 30 --messages 200 --rate 10
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node import wire  # noqa: E402
from node.identity import Identity  # noqa: E402
from node.p2p.config import local_config  # noqa: E402
from node.p2p.gossip import GossipNode  # noqa: E402


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


async def bench(args: argparse.Namespace) -> dict[str, object]:
    rng = random.Random(args.seed)
    nodes = [
        GossipNode(
            Identity.generate(),
            local_config(heartbeat_s=args.heartbeat, status_interval_s=args.status_interval),
        )
        for _ in range(args.nodes)
    ]
    sent_at: dict[str, float] = {}
    arrivals: dict[int, dict[str, list[float]]] = {i: {} for i in range(args.nodes)}

    async def collect(i: int, node: GossipNode) -> None:
        async for packet in node.packets():
            if packet.type is wire.PacketType.INFERENCE_REQUEST:
                arrivals[i].setdefault(packet.body.prompt, []).append(time.perf_counter())

    result: dict[str, object] = {}
    async with trio.open_nursery() as nursery:
        t_start = time.perf_counter()
        for i, node in enumerate(nodes):
            await nursery.start(node.run)
            nursery.start_soon(collect, i, node)
        for i in range(1, args.nodes):
            for j in rng.sample(range(i), min(i, args.links)):
                await nodes[i].connect(nodes[j].listen_multiaddrs()[0])

        def ready() -> bool:
            # every connection carries the topic, and meshes hold as many peers as they can
            for node in nodes:
                connected, topic = len(node.connected_peers()), len(node.topic_peers())
                if topic < connected or len(node.mesh_peers()) < min(topic, node.config.degree_low):
                    return False
            return True

        with trio.fail_after(60):
            while not ready():
                await trio.sleep(0.05)
        ready_s = time.perf_counter() - t_start
        await trio.sleep(args.warmup)  # a few more heartbeats
        setup_s = time.perf_counter() - t_start

        interval = 1.0 / args.rate if args.rate > 0 else 0.0
        t0 = time.perf_counter()
        for k in range(args.messages):
            tag = f"bench-{k}"
            src = k % args.nodes
            sent_at[tag] = time.perf_counter()
            await nodes[src].publish_body(_body(tag))
            if interval:
                await trio.sleep(max(0.0, t0 + (k + 1) * interval - time.perf_counter()))
            else:
                await trio.sleep(0)
        publish_s = time.perf_counter() - t0
        expected = args.messages * (args.nodes - 1)

        def delivered() -> int:  # distinct (node, message) pairs
            return sum(len(a) for a in arrivals.values())

        with trio.move_on_after(args.drain):
            while delivered() < expected:
                await trio.sleep(0.05)
        latencies_ms: list[float] = []
        duplicates = 0
        last_arrival = t0
        for a in arrivals.values():
            for tag, times in a.items():
                latencies_ms.append((times[0] - sent_at[tag]) * 1000.0)
                duplicates += len(times) - 1
                last_arrival = max(last_arrival, times[0])
        got = delivered()
        span = max(1e-9, last_arrival - t0)
        rejected: dict[str, int] = {}
        overflow = outbound_dropped = 0
        for node in nodes:
            overflow += node.counters.queue_overflow
            outbound_dropped += node.counters.outbound_dropped
            for reason, n in node.counters.rejected.items():
                rejected[reason] = rejected.get(reason, 0) + n
        result = {
            "nodes": args.nodes,
            "links_per_node": args.links,
            "messages": args.messages,
            "target_rate": args.rate,
            "delivered_ratio": round(got / expected, 4) if expected else 1.0,
            "deliveries": got,
            "expected": expected,
            "duplicates": duplicates,
            "p50_ms": round(statistics.median(latencies_ms), 2) if latencies_ms else None,
            "p99_ms": round(_pct(latencies_ms, 0.99), 2) if latencies_ms else None,
            "max_ms": round(max(latencies_ms), 2) if latencies_ms else None,
            "published_per_s": round(args.messages / max(1e-9, publish_s), 1),
            "messages_per_s": round(args.messages / span, 1),
            "deliveries_per_s": round(got / span, 1),
            "rejected": rejected,
            "queue_overflow": overflow,
            "outbound_dropped": outbound_dropped,
            "setup_s": round(setup_s, 2),
            "mesh_ready_s": round(ready_s, 2),
        }
        t_stop = time.perf_counter()
        nursery.cancel_scope.cancel()
    result["shutdown_s"] = round(time.perf_counter() - t_stop, 2)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument(
        "--processes", type=int, default=0, help="N separate node processes (namespaces as root)"
    )
    parser.add_argument("--no-netns", action="store_true", help="with --processes: stay on 127.0.0.1")
    parser.add_argument("--messages", type=int, default=100, help="messages in total (round-robin senders)")
    parser.add_argument("--rate", type=float, default=5.0, help="publish rate, messages/s; 0 = unthrottled")
    parser.add_argument("--links", type=int, default=3, help="random earlier nodes each node dials")
    parser.add_argument("--heartbeat", type=float, default=1.0, help="GossipSub heartbeat (s)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds to wait once meshes formed")
    parser.add_argument("--drain", type=float, default=15.0, help="max seconds to wait for stragglers")
    parser.add_argument("--status-interval", type=float, default=2.0, help="peer_status heartbeat (s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    args = parser.parse_args()
    if args.nodes < 2 or args.messages < 1 or args.links < 1 or args.rate < 0:
        parser.error("need --nodes >= 2, --messages >= 1, --links >= 1, --rate >= 0")
    logging.basicConfig(level=logging.ERROR)
    if args.processes:
        from gossip_procs import run as run_processes

        if args.processes < 2:
            parser.error("need --processes >= 2")
        res = run_processes(
            args.processes,
            messages=args.messages,
            rate=args.rate,
            links=args.links,
            status_interval=args.status_interval,
            drain=args.drain,
            seed=args.seed,
            netns=False if args.no_netns else None,
        )
        print(
            f"processes          {res['processes']} ({'network namespaces' if res['netns'] else '127.0.0.1'}), "
            f"{res['children_reporting']} reported"
        )
        print(
            f"messages           {res['messages']} at {res['rate'] or 'unthrottled'} msg/s, {res['links']} links/node"
        )
        print(f"delivered          {res['delivered']}/{res['expected']} = {res['delivered_ratio']:.4f}")
        print(f"latency            p50 {res['p50_ms']} ms  p99 {res['p99_ms']} ms  max {res['max_ms']} ms")
        print(f"outbound dropped   {res['outbound_dropped']}")
        if args.json:
            print(json.dumps(res))
        return 0

    result = trio.run(bench, args)
    print(
        f"nodes              {result['nodes']} (each dials {result['links_per_node']} random earlier nodes)"
    )
    print(f"messages           {result['messages']} at target {result['target_rate'] or 'unthrottled'} msg/s")
    print(
        f"delivered          {result['deliveries']}/{result['expected']} "
        f"= {result['delivered_ratio']:.4f}  duplicates {result['duplicates']}"
    )
    print(
        f"latency            p50 {result['p50_ms']} ms  p99 {result['p99_ms']} ms  max {result['max_ms']} ms"
    )
    print(
        f"throughput         {result['messages_per_s']} msg/s end to end  "
        f"({result['deliveries_per_s']} deliveries/s, published at {result['published_per_s']} msg/s)"
    )
    print(
        f"rejected           {result['rejected'] or 'none'}  queue overflow {result['queue_overflow']}  "
        f"outbound dropped {result['outbound_dropped']}"
    )
    print(
        f"setup / shutdown   {result['setup_s']} s (meshes formed after {result['mesh_ready_s']} s) "
        f"/ {result['shutdown_s']} s"
    )
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
