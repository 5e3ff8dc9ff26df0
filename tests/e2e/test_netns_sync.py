"""History sync between separate hosts: a node that was down for a whole request learns
its final state and certificate from its peers when it comes back."""

from __future__ import annotations

import signal
import time

import pytest

from tests.e2e.netns_helpers import needs_netns, netns_testnet, request_view, succeeded_request, tiny_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900), needs_netns]


def test_a_node_down_during_a_request_gets_its_result_and_certificate_by_sync(tmp_path, tiny_llama_dir):
    with netns_testnet(tmp_path / "net", 4, tiny_env(tiny_llama_dir)) as (net, nodes):
        late = nodes[3]
        net.kill(late.name, signal.SIGTERM)
        rid, views = succeeded_request(
            nodes[0], nodes[:3], quorum=2, max_time_ms=180_000, commit_window_ms=20_000
        )
        net.restart(late.name)
        end = time.monotonic() + 90
        view = None
        while time.monotonic() < end:
            view = request_view(late, rid)
            if view is not None and view.get("state") == "succeeded":
                break
            time.sleep(1)
        assert view is not None and view.get("state") == "succeeded", view
        assert view["answer"] == views["node-0"]["answer"]
        assert view.get("certificate"), view.keys()
        assert {m["node_id"] for m in view["members"]} == {m["node_id"] for m in views["node-0"]["members"]}
