"""End-to-end load: concurrent signed requests against a local testnet, to consensus.

    .venv/bin/python scripts/bench_e2e.py --nodes 3 --requests 50 [--json]
    .venv/bin/python scripts/bench_e2e.py --url http://127.0.0.1:8420 --url ... --requests 20

Starts `--nodes` daemons with `rakis testnet up` machinery (or uses the running nodes
given with `--url`), signs `--requests` requests (one client key each, like many users),
submits them all at once round-robin across the nodes, and follows every one to a final
state. Prints submitted, refused at submission (by error code), succeeded, failed (by
reason), lost (never reached a final state before the timeout) and the latency from
submission to the final state (p50/p99), measured with the nodes' own `finished_at`.
With `--json` the last line is one JSON object with the same figures.

`--openai` then sends the same load again through `/verified/v1/chat/completions` with
the official `openai` client (same prompts, models and security frame), each call
waiting for the agreed answer, and reports the overhead of that path against the raw
request API: latency to the answer as the caller sees it minus latency to the final
state at the node (p50 and mean). A testnet started here gets verified limits high
enough for the load; nodes given with `--url` keep theirs.

Exit status 1 when any request is lost. The machine is usually shared while measuring:
latencies are end-to-end wall times, not a property of the code alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node import wire  # noqa: E402
from node.config import DEFAULT_EMBEDDING_MODEL, DEFAULT_LLM_MODEL  # noqa: E402
from node.identity import Identity  # noqa: E402

FINAL = ("succeeded", "failed", "expired")
TINY = "tiny-llama"


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def build_frames(args: argparse.Namespace, model: str) -> list[bytes]:
    frames = []
    for i in range(args.requests):
        body = wire.InferenceRequest(
            prompt=f"Request {i}: name one colour of the rainbow.",
            accepted_models=[model],
            temperature=0.0,
            max_tokens=args.max_tokens,
            security_frame=wire.SecurityFrame(
                quorum=args.quorum,
                max_time_ms=int(args.max_time * 1000),
                sec_distance=args.sec_distance,
                sec_percentage=args.sec_percentage,
                embedding_model=DEFAULT_EMBEDDING_MODEL,
                commit_window_ms=None if args.commit_window is None else int(args.commit_window * 1000),
            ),
        )
        frames.append(wire.encode(body, Identity.generate().signing_key))
    return frames


def submit_all(urls: list[str], frames: list[bytes]) -> list[dict[str, Any]]:
    """POST every frame at once (one thread each), round-robin over the nodes."""

    def one(i: int) -> dict[str, Any]:
        url = urls[i % len(urls)]
        t0 = time.time()
        try:
            r = httpx.post(
                url + "/v1/requests",
                content=frames[i],
                headers={"content-type": "application/octet-stream"},
                timeout=120,
            )
        except httpx.HTTPError as exc:
            return {"i": i, "url": url, "t_submit": t0, "error": f"http:{type(exc).__name__}"}
        if r.status_code != 200:
            try:
                code = r.json()["error"]["code"]
            except Exception:  # noqa: BLE001
                code = f"http_{r.status_code}"
            return {"i": i, "url": url, "t_submit": t0, "error": code}
        return {"i": i, "url": url, "t_submit": t0, "request_id": r.json()["request_id"]}

    with ThreadPoolExecutor(max_workers=min(64, len(frames))) as pool:
        return list(pool.map(one, range(len(frames))))


def follow(subs: list[dict[str, Any]], timeout: float, interval: float = 0.5) -> None:
    """Poll each accepted request at the node it was submitted to until final or timeout."""
    pending = {s["request_id"]: s for s in subs if "request_id" in s}
    end = time.monotonic() + timeout
    with httpx.Client(timeout=10) as http:
        while pending and time.monotonic() < end:
            for rid, s in list(pending.items()):
                try:
                    r = http.get(f"{s['url']}/v1/requests/{rid}")
                except httpx.HTTPError:
                    continue
                if r.status_code != 200:
                    continue
                view = r.json()
                if view.get("state") in FINAL:
                    s["state"], s["reason"] = view["state"], view.get("reason")
                    s["t_final"] = time.time()
                    finished = view.get("finished_at")
                    if isinstance(finished, int | float) and finished > 0:
                        s["t_final"] = finished / 1000 if finished > 1e11 else float(finished)
                    s["members"] = len(view.get("members") or [])
                    del pending[rid]
            if pending:
                time.sleep(interval)


def summarize(
    args: argparse.Namespace, subs: list[dict[str, Any]], wall_s: float, model: str
) -> dict[str, Any]:
    accepted = [s for s in subs if "request_id" in s]
    refused = Counter(s["error"] for s in subs if "error" in s)
    final = [s for s in accepted if "state" in s]
    succeeded = [s for s in final if s["state"] == "succeeded"]
    failed = Counter((s["reason"] or s["state"]) for s in final if s["state"] != "succeeded")
    lat = [max(0.0, s["t_final"] - s["t_submit"]) for s in succeeded]
    return {
        "nodes": args.nodes if not args.url else len(args.url),
        "requests": args.requests,
        "model": model,
        "quorum": args.quorum,
        "max_tokens": args.max_tokens,
        "submitted": len(subs),
        "accepted": len(accepted),
        "refused": dict(refused),
        "succeeded": len(succeeded),
        "failed": dict(failed),
        "lost": len(accepted) - len(final),
        "latency_s": {
            "p50": _r(percentile(lat, 50)),
            "p99": _r(percentile(lat, 99)),
            "mean": _r(statistics.fmean(lat) if lat else None),
            "max": _r(max(lat) if lat else None),
        },
        "wall_s": round(wall_s, 2),
        "throughput_rps": round(len(succeeded) / wall_s, 3) if wall_s > 0 else None,
    }


def openai_all(urls: list[str], args: argparse.Namespace, model: str) -> list[dict[str, Any]]:
    """The same load through /verified/v1/chat/completions with the openai client, at once."""
    import openai

    rakis = {
        "quorum": args.quorum,
        "max_time_s": args.max_time,
        "sec_distance": args.sec_distance,
        "sec_percentage": args.sec_percentage,
    }

    def one(i: int) -> dict[str, Any]:
        url = urls[i % len(urls)]
        client = openai.OpenAI(
            base_url=f"{url}/verified/v1", api_key="unused", max_retries=0, timeout=args.max_time + 120
        )
        t0 = time.time()
        try:
            reply = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": f"Request {i}: name one colour of the rainbow."}],
                temperature=0.0,
                max_tokens=args.max_tokens,
                extra_body={"rakis": rakis},
            )
        except openai.APIStatusError as exc:
            body = exc.body if isinstance(exc.body, dict) else {}
            rid = exc.response.headers.get("x-rakis-request-id")
            code = str(body.get("code") or f"http_{exc.status_code}")
            if rid is None:  # refused before it reached the network
                return {"i": i, "url": url, "t_submit": t0, "error": code}
            return {
                "i": i,
                "url": url,
                "t_submit": t0,
                "request_id": rid,
                "state": "failed",
                "reason": code,
                "t_final": time.time(),
            }
        except openai.APIError as exc:
            return {"i": i, "url": url, "t_submit": t0, "error": f"openai:{type(exc).__name__}"}
        rakis_out = (reply.model_extra or {}).get("rakis") or {}
        return {
            "i": i,
            "url": url,
            "t_submit": t0,
            "request_id": reply.id,
            "state": rakis_out.get("state"),
            "reason": rakis_out.get("reason"),
            "t_final": time.time(),
            "members": len(rakis_out.get("members") or []),
        }

    with ThreadPoolExecutor(max_workers=min(64, args.requests)) as pool:
        return list(pool.map(one, range(args.requests)))


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def start_testnet(args: argparse.Namespace) -> tuple[Any, list[str], str]:
    from node.testnet import Testnet

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="rakis-bench-"))
    env: dict[str, str] = {
        "RAKIS_REVEAL_GRACE_S": str(args.reveal_grace),
        # --openai sends the whole load from one address: lift the per-caller limits.
        "RAKIS_VERIFIED__RATE_LIMIT_PER_MIN": "1000000",
        "RAKIS_VERIFIED__RATE_LIMIT_BURST": "1000000",
        "RAKIS_VERIFIED__MAX_CONCURRENT": "10000",
    }
    model = args.model
    models: list[str] | None = None
    if args.tiny:
        from tests.tiny_models import make_tiny_llama_dir

        tiny = make_tiny_llama_dir(root / "tiny-llama", seed=3)
        env["RAKIS_MODEL_PATHS"] = json.dumps({TINY: str(tiny)})
        model, models = TINY, [f"{TINY}=1"]
    net = Testnet(root)
    t0 = time.monotonic()
    nodes = net.up(args.nodes, models=models, env=env, timeout=args.startup_timeout)
    print(f"testnet of {len(nodes)} up in {time.monotonic() - t0:.1f} s ({root})", file=sys.stderr)
    return net, [n.api_url for n in nodes], model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--requests", type=int, default=50)
    p.add_argument(
        "--url", action="append", help="use this running node (repeatable) instead of a new testnet"
    )
    p.add_argument("--model", default=DEFAULT_LLM_MODEL)
    p.add_argument("--tiny", action="store_true", help="serve a tiny random Llama (fast; for tests)")
    p.add_argument("--quorum", type=int, default=None, help="default: the number of nodes")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--max-time", type=float, default=300.0, help="request deadline, seconds")
    p.add_argument(
        "--commit-window",
        type=float,
        default=None,
        help="seconds nodes have to commit (default: the protocol's, a quarter of --max-time, 2-60 s)",
    )
    p.add_argument("--sec-distance", type=float, default=0.2)
    p.add_argument("--sec-percentage", type=float, default=0.6)
    p.add_argument("--timeout", type=float, default=None, help="follow-up limit (default: max-time + 60 s)")
    p.add_argument("--reveal-grace", type=float, default=0.5)
    p.add_argument("--startup-timeout", type=float, default=600.0)
    p.add_argument("--dir", help="testnet directory (default: a new temporary one, removed after)")
    p.add_argument("--keep", action="store_true", help="leave the testnet running")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.add_argument(
        "--openai",
        action="store_true",
        help="also send the same load through /verified/v1 with the openai client; report the overhead",
    )
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    n_nodes = len(args.url) if args.url else args.nodes
    if args.quorum is None:
        args.quorum = n_nodes
    if args.requests < 1 or n_nodes < 1 or not 1 <= args.quorum:
        p.error("--requests, --nodes and --quorum must be at least 1")

    net = None
    if args.url:
        urls, model = [u.rstrip("/") for u in args.url], (TINY if args.tiny else args.model)
    else:
        net, urls, model = start_testnet(args)
    try:
        frames = build_frames(args, model)
        t0 = time.monotonic()
        subs = submit_all(urls, frames)
        follow(subs, args.timeout or args.max_time + 60)
        wall = time.monotonic() - t0
        if args.openai:
            t1 = time.monotonic()
            osubs = openai_all(urls, args, model)
            owall = time.monotonic() - t1
    finally:
        if net is not None and not args.keep:
            net.down()
            if not args.dir:
                shutil.rmtree(net.root, ignore_errors=True)
    out = summarize(args, subs, wall, model)
    lat = out["latency_s"]
    print(
        f"nodes {out['nodes']}  requests {out['requests']}  model {model}  quorum {args.quorum}\n"
        f"submitted {out['submitted']}  accepted {out['accepted']}  refused {out['refused'] or 0}\n"
        f"succeeded {out['succeeded']}  failed {out['failed'] or 0}  lost {out['lost']}\n"
        f"latency to consensus: p50 {lat['p50']} s  p99 {lat['p99']} s  max {lat['max']} s\n"
        f"wall {out['wall_s']} s  ({out['throughput_rps']} succeeded/s)"
    )
    if args.openai:
        via = summarize(args, osubs, owall, model)
        olat = via["latency_s"]
        out["openai"] = via
        out["overhead_s"] = {
            k: _r(olat[k] - lat[k]) if olat[k] is not None and lat[k] is not None else None
            for k in ("p50", "mean")
        }
        print(
            f"via /verified/v1 (openai client): succeeded {via['succeeded']}  failed {via['failed'] or 0}  "
            f"refused {via['refused'] or 0}\n"
            f"latency to the answer: p50 {olat['p50']} s  p99 {olat['p99']} s  max {olat['max']} s\n"
            f"overhead against the raw request API: p50 {out['overhead_s']['p50']} s  "
            f"mean {out['overhead_s']['mean']} s"
        )
    if args.json:
        print(json.dumps(out))
    return 1 if out["lost"] or out.get("openai", {}).get("lost") else 0


if __name__ == "__main__":
    sys.exit(main())
