"""CLI progress helpers: phase tracking from real request snapshots, model loading."""

from __future__ import annotations

import io
import threading

import httpx
import pytest
from rich.console import Console

from node.cli.progress import NodesProgress, PhaseTracker, loading, watch_request
from tests.node.api.conftest import LiveServer, sign_request

pytestmark = pytest.mark.timeout(60)


def recording_console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=False, width=120, color_system=None), buf


def test_watch_request_follows_phases_to_the_final_state(live_server: LiveServer) -> None:
    facade = live_server.facade
    rid = httpx.post(
        f"{live_server.url}/v1/requests",
        content=sign_request(),
        headers={"content-type": "application/octet-stream"},
    ).json()["request_id"]
    console, buf = recording_console()
    result: dict = {}
    watcher = threading.Thread(
        target=lambda: result.update(watch_request(live_server.url, rid, console=console))
    )
    watcher.start()
    live_server.call(facade.set_stage, rid, "inferring")
    live_server.call(
        facade.finish,
        rid,
        [("aa" * 32, "Paris is the capital of France."), ("bb" * 32, "Paris."), ("cc" * 32, "It is Paris.")],
    )
    watcher.join(30)
    assert not watcher.is_alive()
    assert result["state"] == "succeeded" and len(result["members"]) == 3
    out = buf.getvalue()
    assert "succeeded" in out and "3 node(s) in the winning cluster" in out

    with pytest.raises(LookupError):
        watch_request(live_server.url, "ab" * 32, console=recording_console()[0], timeout=5)


def test_phase_tracker_summary_names_the_failure_reason() -> None:
    console, buf = recording_console()
    req = {
        "request_id": "ab" * 32,
        "state": "failed",
        "stage": "done",
        "reason": "no_cluster_of_needed_size",
        "security_frame": {"quorum": 3},
        "commits": [{}, {}, {}],
        "reveals": [{"accepted": True}, {"accepted": False}, {"accepted": True}],
        "members": [],
    }
    with PhaseTracker(req["request_id"], console=console) as tracker:
        tracker.update(req)
    assert "failed (no_cluster_of_needed_size)" in buf.getvalue()


def test_loading_and_nodes_progress() -> None:
    console, buf = recording_console()
    with loading("tiny-llama", console=console):
        pass
    with pytest.raises(RuntimeError), loading("broken-model", console=console):
        raise RuntimeError("no such file")
    with NodesProgress(["node-0", "node-1"], console=console) as nodes:
        nodes.update("node-0", "ready", pid=123, url="http://127.0.0.1:1")
        nodes.update("node-1", "failed")
    out = buf.getvalue()
    assert "✓ tiny-llama loaded in" in out and "✗ broken-model: RuntimeError: no such file" in out
    assert "node-0" in out and "ready" in out and "http://127.0.0.1:1" in out and "failed" in out


@pytest.mark.parametrize("scale", [1000, 1], ids=["ending_at_in_ms", "ending_at_in_s"])
def test_live_header_counts_down_the_seconds_left(scale: int) -> None:
    """Request views carry `ending_at` in ms (the node's) or s: either reads as ~90 s left,
    never as `1794490401324 s left` (seconds subtracted from milliseconds)."""
    import time

    console, _ = recording_console()
    tracker = PhaseTracker("ab" * 32, console=console)
    ending_at = round((time.time() + 90.4) * scale)
    tracker.update({"state": "pending", "stage": "inferring", "ending_at": ending_at})
    header = tracker.header.plain
    assert header.startswith(f"request {'ab' * 8}… · pending · ")
    left = int(header.split(" · ")[-1].removesuffix(" s left"))
    assert 85 <= left <= 91, header

    tracker.update({"state": "pending", "ending_at": round((time.time() - 5) * scale)})
    assert tracker.header.plain.endswith(" · 0 s left")  # past the deadline: 0, not negative
    tracker.update({"state": "succeeded", "ending_at": ending_at})
    assert "s left" not in tracker.header.plain  # only pending requests count down


def test_seconds_left_reads_seconds_and_milliseconds() -> None:
    from node.cli.progress import as_unix_seconds, seconds_left

    now = 1_794_490_000.0
    assert seconds_left(1_794_490_401_324, now=now) == pytest.approx(401.324)
    assert seconds_left(1_794_490_401.5, now=now) == pytest.approx(401.5)
    assert seconds_left(1_794_489_000_000, now=now) == 0.0
    assert seconds_left(None, now=now) is None and seconds_left("soon", now=now) is None
    assert as_unix_seconds(True) is None
