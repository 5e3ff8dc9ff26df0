"""Fixtures for the end-to-end tests: real `rakis node start` daemons (see
`tests/daemon_helpers.py`) serving the real default models, SmolLM2 and MiniLM."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests import daemon_helpers
from tests.daemon_helpers import DEFAULT_MODEL, DaemonOptions, start_network, stop_all

MODEL = DEFAULT_MODEL
OPTIONS = DaemonOptions(model=MODEL, reveal_window_s=15, ready_timeout_s=180, final_timeout_s=120)
# Three SmolLM2 nodes answer 16 tokens in a few seconds on an idle 2-core machine; the
# protocol's default window for 60 s (15 s) leaves room for a loaded one.
make_frame = partial(daemon_helpers.make_frame, model=MODEL, max_time_ms=60_000)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_models import make_tiny_llama_dir

    return make_tiny_llama_dir(tmp_path_factory.mktemp("e2e-tiny-llama"), seed=3)


@pytest.fixture(scope="module")
def daemon_options() -> DaemonOptions:
    """How every e2e daemon is started (for tests that start one of their own)."""
    return OPTIONS


@pytest.fixture(scope="module")
def testnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Three honest daemons: `a` is the hub the others bootstrap to."""
    daemons = start_network(tmp_path_factory.mktemp("testnet"), OPTIONS)
    try:
        a, b, c = daemons
        a.wait_for(lambda: a.peer_count() >= 2, timeout=60, what="a sees 2 peers")
        for d in (b, c):
            d.wait_for(lambda d=d: d.peer_count() >= 1, timeout=60, what="peer seen")
        yield {"a": a, "b": b, "c": c, "root": a.data_dir.parent}
    finally:
        stop_all(daemons)
