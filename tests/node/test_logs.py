"""Logging: JSON lines off a terminal, console on one, levels, secrets redacted."""

from __future__ import annotations

import io
import json
import logging

import pytest

from node.logs import configure_logging, get_logger


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_json_lines_when_not_a_tty() -> None:
    out = io.StringIO()
    configure_logging("info", stream=out)
    get_logger("rakis.test", node="n1").info("started", port=1, seed="0011", admin_token="t")
    logging.getLogger("libp2p.test").warning("from %s", "stdlib")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["event"] == "started" and lines[0]["node"] == "n1" and lines[0]["level"] == "info"
    assert lines[0]["seed"] == "[redacted]" and lines[0]["admin_token"] == "[redacted]"
    assert lines[1]["event"] == "from stdlib" and lines[1]["logger"] == "libp2p.test"


def test_console_when_a_tty_and_levels_filter() -> None:
    out = FakeTTY()
    configure_logging("warning", stream=out)
    log = get_logger("rakis.test")
    log.info("hidden")
    log.warning("shown")
    text = out.getvalue()
    assert "shown" in text and "hidden" not in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_bad_level() -> None:
    with pytest.raises(ValueError, match="loud"):
        configure_logging("loud")
