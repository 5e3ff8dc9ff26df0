"""Soak test: steady mixed load on a testnet while nodes crash, restart, and get cut off.

Starts ``--nodes`` real daemons (the tiny random Llama and the real MiniLM) with
``node.testnet.Testnet`` (in network namespaces with ``--netns``), then for ``--minutes``:

- submits a request every ``--interval`` s to a random running node (quorum 2 or 3,
  8 or 16 tokens, a fresh client key each time);
- every ``--chaos-every`` s does one random fault: SIGKILL a node and restart it a few
  seconds later, or (``--netns``) partition a node and heal it later. At most one node
  is down or cut off at a time, so a quorum of 3 stays possible.

Afterwards it waits for every accepted request's deadline, asks every node for each
request's state and reports: submitted, accepted, succeeded, failed by reason, refused
at submission by reason, and lost (accepted, yet no node has a final state for it).
The last line is a JSON object.

    sudo .venv/bin/python scripts/soak.py --minutes 2 --nodes 5 --netns
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.testnet import Testnet  # noqa: E402
from tests.daemon_helpers import make_frame  # noqa: E402

TINY = "tiny-llama"
FINAL = ("succeeded", "failed", "expired")


def _env(tiny_dir: Path) -> dict[str, str]:
    return {
        "RAKIS_MODEL_PATHS": json.dumps({TINY: str(tiny_dir)}),
        "RAKIS_LLM_MODELS": json.dumps({TINY: 1, "smollm2-135m-instruct": 0}),
        "RAKIS_REVEAL_GRACE_S": "0.5",
        "RAKIS_DHT_INTERVAL_S": "5",
    }


def _state(http: httpx.Client, url: str, rid: str) -> dict[str, Any] | None:
    try:
        r = http.get(f"{url}/v1/requests/{rid}")
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def soak(
    *,
    minutes: float,
    nodes: int,
    netns: bool,
    interval: float,
    chaos_every: float,
    seed: int,
    root: Path | None = None,
    log=print,
) -> dict[str, Any]:
    from tests.tiny_models import make_tiny_llama_dir

    rng = random.Random(seed)
    work = root or Path(tempfile.mkdtemp(prefix="rakis-soak-"))
    tiny = make_tiny_llama_dir(work / "tiny-llama", seed=3)
    net = Testnet(work / "net")
    max_time_ms = 90_000
    submitted = 0
    accepted: dict[str, str] = {}  # rid -> node name it was sent to
    refused: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    entries = net.up(nodes, torch_threads=1, env=_env(tiny), timeout=600, netns=netns)
    names = [e.name for e in entries]
    down: dict[str, tuple[str, float]] = {}  # name -> (fault, when to undo)
    try:
        with httpx.Client(timeout=10) as http:
            end = time.monotonic() + minutes * 60
            next_submit = time.monotonic()
            next_chaos = time.monotonic() + chaos_every
            while time.monotonic() < end:
                now = time.monotonic()
                for name, (fault, undo_at) in list(down.items()):
                    if now >= undo_at:
                        try:
                            if fault == "kill":
                                net.restart(name)
                            else:
                                net.heal(name)
                        except Exception as exc:  # noqa: BLE001 - report, keep soaking
                            log(f"undo {fault} on {name} failed: {exc}")
                            faults[f"undo_failed:{fault}"] += 1
                        del down[name]
                if now >= next_chaos and not down:
                    victim = rng.choice(names)
                    fault = rng.choice(["kill", "partition"] if netns else ["kill"])
                    if fault == "kill":
                        net.kill(victim, signal.SIGKILL)
                    else:
                        net.partition(victim)
                    faults[fault] += 1
                    down[victim] = (fault, now + rng.uniform(5, 15))
                    log(f"{time.strftime('%H:%M:%S')} {fault} {victim}")
                    next_chaos = now + chaos_every
                if now >= next_submit:
                    live = [e for e in net.nodes() if e.name not in down]
                    target = rng.choice(live)
                    frame = make_frame(
                        f"soak {submitted}: name a {rng.choice(['planet', 'colour', 'river', 'tree'])}.",
                        model=TINY,
                        quorum=rng.choice([2, 3]),
                        max_time_ms=max_time_ms,
                        max_tokens=rng.choice([8, 16]),
                        commit_window_ms=15_000,
                    )
                    submitted += 1
                    try:
                        r = http.post(
                            target.api_url + "/v1/requests",
                            content=frame,
                            headers={"content-type": "application/octet-stream"},
                        )
                        if r.status_code == 200:
                            accepted[r.json()["request_id"]] = target.name
                        else:
                            refused[f"http_{r.status_code}"] += 1
                    except httpx.HTTPError as exc:
                        refused[type(exc).__name__] += 1
                    next_submit = now + interval
                time.sleep(0.2)
            for name, (fault, _) in list(down.items()):
                net.restart(name) if fault == "kill" else net.heal(name)
            down.clear()
            # Every accepted request is past its deadline (plus the consensus window) here.
            time.sleep(max_time_ms / 1000 + 20)
            finals: dict[str, list[dict[str, Any]]] = {}
            urls = [e.api_url for e in net.nodes()]
            for rid in accepted:
                finals[rid] = [v for u in urls if (v := _state(http, u, rid)) and v.get("state") in FINAL]
    finally:
        net.down(timeout=30)
    outcome: Counter[str] = Counter()
    lost = []
    for rid, views in finals.items():
        if not views:
            lost.append(rid)
            continue
        states = Counter(v["state"] for v in views)
        if states.get("succeeded"):
            outcome["succeeded"] += 1
        else:
            reasons = Counter(v.get("reason") or v["state"] for v in views)
            outcome[f"failed:{reasons.most_common(1)[0][0]}"] += 1
    return {
        "minutes": minutes,
        "nodes": nodes,
        "netns": netns,
        "submitted": submitted,
        "accepted": len(accepted),
        "refused": dict(refused),
        "succeeded": outcome.pop("succeeded", 0),
        "failed": dict(outcome),
        "lost": len(lost),
        "lost_ids": lost[:20],
        "faults": dict(faults),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--netns", action="store_true", help="each node in its own network namespace (root)")
    p.add_argument("--interval", type=float, default=6.0, help="seconds between submissions")
    p.add_argument("--chaos-every", type=float, default=25.0, help="seconds between faults")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    if a.nodes < 3:
        p.error("need --nodes >= 3 (one may be down while a quorum of 2 stays possible)")
    res = soak(
        minutes=a.minutes,
        nodes=a.nodes,
        netns=a.netns,
        interval=a.interval,
        chaos_every=a.chaos_every,
        seed=a.seed,
    )
    print(f"submitted {res['submitted']}  accepted {res['accepted']}  refused {res['refused'] or 'none'}")
    print(f"succeeded {res['succeeded']}  failed {res['failed'] or 'none'}  lost {res['lost']}")
    print(f"faults    {res['faults']}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
