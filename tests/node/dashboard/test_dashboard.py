"""The dashboard in a real headless browser (Debian chromium via playwright).

`test_dashboard_over_facade` serves a node facade with real engines through Hypercorn
and checks everything the dashboard shows (~15 s). `test_dashboard_on_3_node_testnet`
is the issue's end-to-end check on three real daemons (~80 s on 2 shared cores).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.node.api.conftest import ADMIN_TOKEN, TINY_MODEL, LiveServer, sign_request
from tests.node.dashboard.browser import browser_page

OUTPUTS = [
    ("aa" * 32, "Paris is the capital of France."),
    ("bb" * 32, "The capital of France is Paris."),
    ("cc" * 32, "It is Paris, the French capital."),
    ("dd" * 32, "Bananas are a good source of potassium."),
    ("ee" * 32, "Paris is the capital of France."),  # same output as aa: same point
]
RAW = {"content-type": "application/octet-stream"}


def submit(url: str, prompt: str) -> str:
    r = httpx.post(f"{url}/v1/requests", content=sign_request(prompt), headers=RAW, timeout=10)
    r.raise_for_status()
    return r.json()["request_id"]


@pytest.mark.timeout(120)
def test_dashboard_over_facade(live_server: LiveServer, tmp_path: Path) -> None:
    facade = live_server.facade
    third = dict(facade.peer_list[0], peer_id="12D3KooWPeer3", node_id="03" * 32, reputation=0.5)
    facade.peer_list.append(third)
    rid = submit(live_server.url, "What is the capital of France?")
    live_server.call(facade.finish, rid, OUTPUTS)

    with browser_page() as page:
        page.goto(live_server.url + "/")
        page.wait_for_selector("#live.ok", timeout=15_000)  # SSE connected
        page.wait_for_function("document.querySelectorAll('tr.peer-row').length === 3", timeout=15_000)
        assert page.locator("#peer-count").inner_text() == "3"

        row = page.locator(f'tr.request-row[data-request-id="{rid}"]')
        row.wait_for(timeout=15_000)
        assert row.get_attribute("data-state") == "succeeded"
        assert row.locator("svg.cluster-plot").count() == 1

        # the detail view: answer and the large plot with the cluster and the outlier
        row.click()
        plot = page.locator("#detail-plot svg.cluster-plot")
        plot.wait_for(timeout=10_000)
        assert plot.get_attribute("data-points") == "5"
        assert plot.locator("circle.in").count() == 4
        assert plot.locator("circle.out").count() == 1
        centres = plot.locator("circle").evaluate_all(
            "cs => cs.map(c => c.getAttribute('cx') + ',' + c.getAttribute('cy'))"
        )
        assert len(set(centres)) == 5  # identical outputs are spread apart, all visible
        assert "Paris" in page.locator("#detail-fields").inner_text()

        # a new request shows up live (SSE-triggered refresh), still pending
        rid2 = submit(live_server.url, "Name a yellow fruit.")
        new_row = page.locator(f'tr.request-row[data-request-id="{rid2}"]')
        new_row.wait_for(timeout=10_000)
        assert new_row.get_attribute("data-state") == "pending"
        assert "queued" in new_row.locator(".stage.current").inner_text()

        # workers, queues, packets, logs with search
        page.wait_for_function("document.querySelectorAll('tr.worker-row').length >= 2", timeout=10_000)
        assert TINY_MODEL in page.locator("#workers").inner_text()
        assert page.locator("tr.packet-row").count() >= 2
        page.fill("#log-search", rid2[:16])
        page.click("#log-form button")
        page.wait_for_function(
            f"document.getElementById('logs').textContent.includes('{rid2}')"
            f" && !document.getElementById('logs').textContent.includes('{rid}')",
            timeout=10_000,
        )

        # scaling: refused with a wrong token, done with the right one
        page.select_option("#scale-model", TINY_MODEL)
        page.fill("#scale-n", "2")
        page.fill("#admin-token", "wrong-token-0123456789")
        page.click("#scale-form button")
        page.wait_for_selector("#scale-result.err", timeout=10_000)
        assert "not valid" in page.locator("#scale-result").inner_text()
        page.fill("#admin-token", ADMIN_TOKEN)
        page.click("#scale-form button")
        page.wait_for_selector("#scale-result.okmsg", timeout=10_000)
        assert facade.scaled == [(TINY_MODEL, 2)]

        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        # the only failed load is the refused scale request
        assert [e for e in page.console_errors if "status of 403" not in e] == []


def _rakis(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from node.cli.app import app; app()", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(
    importlib.util.find_spec("node.testnet") is None,
    reason="needs `rakis testnet up/status/down` and `rakis submit` (node/testnet.py)",
)
def test_dashboard_on_3_node_testnet(tmp_path: Path) -> None:
    """Issue 10: a 3-node testnet, one signed request, the dashboard shows 3 peers and
    the finished request with its cluster plot; screenshot saved under tmp_path."""
    net = tmp_path / "testnet"
    _rakis("testnet", "up", "-n", "3", "--dir", str(net), timeout=300)
    try:
        nodes = json.loads(_rakis("testnet", "status", "--json", "--dir", str(net)).stdout)
        assert len(nodes) == 3 and all(n["ready"] for n in nodes)
        url = nodes[0]["api_url"].rstrip("/")
        out = _rakis("submit", "What is the capital of France?", "--node", url, "--quorum", "3", "--json")
        result = json.loads(out.stdout)
        rid = result["request_id"]
        assert result["state"] == "succeeded", result

        with browser_page() as page:
            page.goto(url + "/")
            page.wait_for_selector("#live.ok", timeout=20_000)
            # 3 nodes on the dashboard: its peers plus itself (whether or not it lists itself)
            self_id = httpx.get(f"{url}/v1/node", timeout=10).json()["node_id"]
            deadline = time.time() + 60
            while True:
                ids = page.eval_on_selector_all(
                    "tr.peer-row", "rows => rows.map(r => r.querySelector('code').title.split('\\n')[1])"
                )
                node_ids = {i.removeprefix("node ") for i in ids} | {self_id}
                if len(node_ids) == 3 or time.time() > deadline:
                    break
                page.wait_for_timeout(500)
            assert len(node_ids) == 3, ids

            row = page.locator(f'tr.request-row[data-request-id="{rid}"]')
            row.wait_for(timeout=20_000)
            assert row.get_attribute("data-state") == "succeeded"
            row.click()
            plot = page.locator("#detail-plot svg.cluster-plot")
            plot.wait_for(timeout=20_000)
            assert int(plot.get_attribute("data-in-cluster")) >= 2
            assert plot.locator("circle.in").count() >= 2
            page.screenshot(path=str(tmp_path / "dashboard-testnet.png"), full_page=True)
            assert page.console_errors == []
    finally:
        _rakis("testnet", "down", "--dir", str(net), timeout=120)
