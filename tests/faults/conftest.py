"""Fixtures for the fault tests: real `rakis node start` daemons (see
`tests/daemon_helpers.py`) serving the tiny random Llama (fast to load) and the real
MiniLM. A restarted daemon keeps its libp2p port, so its peers can redial it."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from tests import daemon_helpers
from tests.daemon_helpers import Daemon, DaemonOptions, start_network, stop_all

TINY_MODEL = "tiny-llama"
make_frame = partial(daemon_helpers.make_frame, model=TINY_MODEL, max_time_ms=120_000)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_models import make_tiny_llama_dir

    return make_tiny_llama_dir(tmp_path_factory.mktemp("faults-tiny-llama"), seed=3)


@pytest.fixture(scope="session")
def daemon_options(tiny_llama_dir: Path) -> DaemonOptions:
    """How every fault-test daemon is started: tiny Llama, long reveal window, sticky port."""
    return DaemonOptions(
        model=TINY_MODEL,
        model_dir=tiny_llama_dir,
        reveal_window_s=90,
        ready_timeout_s=240,
        final_timeout_s=150,
        keep_p2p_port=True,
        # These tests are about faults and attacks, not committees: every node runs every
        # request (test_committee.py starts its own daemons with sortition on).
        env={"RAKIS_SORTITION": "false"},
    )


@pytest.fixture(scope="package")
def trio_net(
    tmp_path_factory: pytest.TempPathFactory, daemon_options: DaemonOptions
) -> Iterator[dict[str, Daemon]]:
    """Three daemons (shared by the fault tests and the load test); b and c bootstrap to a."""
    daemons = start_network(tmp_path_factory.mktemp("faults-net"), daemon_options)
    try:
        a, b, c = daemons
        # Everyone redials everyone after a restart: bootstrap lists are fixed now.
        a.bootstrap, b.bootstrap, c.bootstrap = [b.addr, c.addr], [a.addr, c.addr], [a.addr, b.addr]
        for d in (a, b, c):
            d.wait_for(lambda d=d: d.peer_count() >= 2 or d is not a and d.peer_count() >= 1, 60, "peers")
        a.wait_for(lambda: a.peer_count() >= 2, 60, "a sees b and c")
        yield {"a": a, "b": b, "c": c}
    finally:
        stop_all(daemons)
