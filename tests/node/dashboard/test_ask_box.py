"""The dashboard's "ask the network" box in headless chromium, over the in-memory facade
(fast): the answer with each output's verdict and the certificate link, and a failure
shown in words. The same box on three real daemons is
tests/e2e/test_verified_openai.py::test_ask_the_network_box_in_the_dashboard."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.node.api.conftest import TINY_MODEL, LiveServer
from tests.node.dashboard.browser import browser_page

AGREE = [("aa" * 32, "Green."), ("bb" * 32, "Green."), ("cc" * 32, "Green.")]
SPLIT = [("aa" * 32, "Green."), ("bb" * 32, "Bananas grow on large herbs."), ("cc" * 32, "1 2 3 4 5 6")]


def finish_next(server: LiveServer, known: set[str], outputs: list[tuple[str, str]]) -> str:
    """Wait for a request the box submitted, then finish it with `outputs`."""
    facade = server.facade
    end = time.monotonic() + 20
    while time.monotonic() < end:
        new = set(facade.requests) - known
        if new:
            rid = new.pop()
            server.call(facade.finish, rid, outputs)
            return rid
        time.sleep(0.1)
    raise AssertionError("the box submitted nothing")


@pytest.mark.timeout(120)
def test_ask_box_shows_answer_verdicts_certificate_and_failures(
    live_server: LiveServer, tmp_path: Path
) -> None:
    with browser_page() as page:
        page.goto(live_server.url + "/")
        page.wait_for_selector(f'#ask-model option[value="{TINY_MODEL}"]', state="attached", timeout=15_000)
        page.fill("#ask-prompt", "Name a colour.")
        page.click("#ask-submit")
        rid = finish_next(live_server, set(), AGREE)
        page.wait_for_selector('#ask-status[data-state="succeeded"]', timeout=20_000)
        assert page.text_content("#ask-answer") == "Green."
        assert page.text_content("#ask-request") == rid[:16]
        href = page.get_attribute("#ask-certificate", "href")
        assert href == f"{live_server.url}/v1/requests/{rid}/certificate"
        page.screenshot(path=str(tmp_path / "ask-box.png"), full_page=True)

        page.click("#ask-submit")
        finish_next(live_server, {rid}, SPLIT)
        page.wait_for_selector('#ask-status[data-state="failed"]', timeout=20_000)
        error = page.text_content("#ask-error")
        assert "did not agree" in error and "no_cluster_of_needed_size" in error
        assert page.console_errors == []
