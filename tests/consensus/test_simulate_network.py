"""``scripts/simulate_network.py`` in a small configuration: the JSON contract, an honest
network is never captured, sortition cuts the work, and the simulator really runs the
project's ``consensus.quorum`` and ``consensus.sortition`` (changing a rule there changes
its results)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import consensus.quorum
import consensus.sortition

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "simulate_network.py"
KEYS = {
    "nodes",
    "requests_per_s",
    "compute_per_request",
    "messages_per_node_per_request",
    "p50_latency_s",
    "p99_latency_s",
    "captured_share",
    "blocked_share",
}


@pytest.fixture(scope="module")
def sim():
    spec = importlib.util.spec_from_file_location("simulate_network", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["simulate_network"] = mod
    spec.loader.exec_module(mod)
    return mod


def run(sim, *args: str) -> dict:
    return sim.main(["--nodes", "100", "--requests", "8", "--json", *args])


def test_cli_prints_one_json_object_last() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--nodes", "100", "--requests", "5", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert KEYS <= set(result)
    assert result["nodes"] == 100 and result["captured_share"] == 0.0


def test_honest_network_with_sortition_is_never_captured_and_runs_few_nodes(sim) -> None:
    r = run(sim)
    assert r["captured_share"] == 0.0 and r["blocked_share"] == 0.0
    assert 3 <= r["compute_per_request"] < 15  # a committee, not the 100 nodes
    full = run(sim, "--no-sortition")
    assert full["captured_share"] == 0.0
    assert full["compute_per_request"] > 80
    assert full["messages_per_node_per_request"] > 10 * r["messages_per_node_per_request"]
    assert r["requests_per_s"] > 5 * full["requests_per_s"]


def test_a_fast_garbage_quorum_captures_nothing_under_protocol_2(sim) -> None:
    """Before proof of inference a fast garbage quorum captured most requests (commits
    closed on its reveal request). Now the commit window alone lets every honest commit
    in, so the honest cluster outnumbers it, and re-checks exclude it outright."""
    attack = ["--no-sortition", "--adversary-share", "0.1", "--adversary-kind", "garbage"]
    assert run(sim, *attack)["captured_share"] == 0.0  # window + clustering only
    assert run(sim, *attack, "--recheck")["captured_share"] == 0.0


def test_a_change_in_consensus_sortition_changes_the_result(sim, monkeypatch) -> None:
    base = run(sim)["compute_per_request"]
    monkeypatch.setattr(consensus.sortition, "committee_target", lambda quorum, config=None: 30.0)
    assert run(sim)["compute_per_request"] > base + 10


def test_a_change_in_the_quorum_machine_changes_the_result(sim, monkeypatch) -> None:
    assert run(sim)["blocked_share"] == 0.0
    monkeypatch.setattr(consensus.quorum.QuorumMachine, "own_inference_done", lambda self, *a, **k: [])
    assert run(sim)["blocked_share"] == 1.0  # nobody's commit goes out: every request fails
