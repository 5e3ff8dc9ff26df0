"""Shared by the namespace e2e tests: start/stop a `--netns` testnet of tiny-model
daemons, submit a request, wait for final states."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from node.testnet import NodeEntry, Testnet, _alive
from tests.daemon_helpers import make_frame

TINY = "tiny-llama"
FINAL = ("succeeded", "failed", "expired")

needs_netns = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="network namespaces need root and iproute2"
)


def tiny_env(tiny_llama_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        "RAKIS_MODEL_PATHS": json.dumps({TINY: str(tiny_llama_dir)}),
        "RAKIS_LLM_MODELS": json.dumps({TINY: 1, "smollm2-135m-instruct": 0}),
        "RAKIS_REVEAL_GRACE_S": "0.5",
    }
    env.update(extra)
    return env


@contextmanager
def netns_testnet(
    root: Path, n: int, env: dict[str, str], **up: Any
) -> Iterator[tuple[Testnet, list[NodeEntry]]]:
    """`Testnet.up(n, netns=True)`; everything it started is gone on exit, pass or fail."""
    net = Testnet(root)
    try:
        nodes = net.up(n, torch_threads=1, env=env, timeout=420, netns=True, **up)
        yield net, nodes
    finally:
        net.down(timeout=30)
        for node in net.nodes():
            rec = node.read_pid()
            if rec is not None and _alive(*rec):
                os.kill(rec[0], signal.SIGKILL)
        net.topology().destroy()


def submit(
    node: NodeEntry, prompt: str, *, quorum: int, max_time_ms: int = 60_000, commit_window_ms: int = 8_000
) -> str:
    frame = make_frame(
        prompt, model=TINY, quorum=quorum, max_time_ms=max_time_ms, commit_window_ms=commit_window_ms
    )
    r = httpx.post(
        node.api_url + "/v1/requests",
        content=frame,
        headers={"content-type": "application/octet-stream"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.json()["request_id"]


def request_view(node: NodeEntry, rid: str) -> dict[str, Any] | None:
    try:
        r = httpx.get(f"{node.api_url}/v1/requests/{rid}", timeout=5)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def wait_final(nodes: list[NodeEntry], rid: str, timeout_s: float = 180) -> dict[str, dict[str, Any]]:
    views: dict[str, dict[str, Any]] = {}
    end = time.monotonic() + timeout_s
    while len(views) < len(nodes) and time.monotonic() < end:
        for n in nodes:
            if n.name not in views:
                v = request_view(n, rid)
                if v is not None and v.get("state") in FINAL:
                    views[n.name] = v
        time.sleep(1)
    return views


def peers(node: NodeEntry) -> list[dict[str, Any]]:
    try:
        return httpx.get(node.api_url + "/v1/peers", timeout=5).json()["peers"]
    except (httpx.HTTPError, ValueError, KeyError):
        return []


def succeeded_request(
    entry: NodeEntry, watchers: list[NodeEntry], *, quorum: int, tries: int = 5, **kw: Any
) -> tuple[str, dict[str, dict[str, Any]]]:
    """Submit until one request succeeds on every watcher; returns its id and views.

    The random tiny model sometimes writes whitespace runs that re-tokenize to more than
    ``max_tokens``: the proof-of-inference re-check then fails every reveal
    (``too_long``) and the request fails for a reason no network test is about."""
    views: dict[str, dict[str, Any]] = {}
    for i in range(tries):
        rid = submit(entry, f"Name a planet ({i}).", quorum=quorum, **kw)
        views = wait_final(watchers, rid)
        if len(views) == len(watchers) and {v["state"] for v in views.values()} == {"succeeded"}:
            return rid, views
    raise AssertionError({k: (v["state"], v.get("reason")) for k, v in views.items()})
