"""`rakis submit` against a real lone node: a quorum the network cannot meet is refused
before anything is signed, with the fix; `--quorum 1` then succeeds; `--force` submits.

The node is the real daemon (`node.daemon.run.serve`: libp2p host, Hypercorn, orchestrator,
store, a tiny random Llama and the real MiniLM) in this process, as the attack tests run it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from node.cli.app import app
from tests.adversarial.conftest import TINY_MODEL, node_settings
from tests.inprocess import InProcessServer

pytestmark = pytest.mark.timeout(300)
runner = CliRunner()


@pytest.fixture(scope="module")
def lone_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    import torch

    from tests.tiny_models import make_tiny_llama_dir

    torch.set_num_threads(1)
    tiny = make_tiny_llama_dir(tmp_path_factory.mktemp("tiny-llama"), seed=3)
    node = InProcessServer.daemon(node_settings(tmp_path_factory.mktemp("lone-node"), tiny)).start()
    try:
        yield node
    finally:
        node.stop()


def _submit(node: InProcessServer, key: Path, *args: str):
    return runner.invoke(
        app,
        ["submit", "Name a colour.", "--node", node.url, "--model", TINY_MODEL, "--key", str(key), *args],
    )


def _request_ids(node: InProcessServer) -> list[str]:
    return [r["request_id"] for r in httpx.get(f"{node.url}/v1/requests", timeout=10).json()["requests"]]


def test_default_quorum_on_a_lone_node_is_refused_before_signing(lone_node, tmp_path):
    before = _request_ids(lone_node)
    key = tmp_path / "client.key"
    r = _submit(lone_node, key)  # the default quorum: 3
    assert r.exit_code == 1, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: quorum 3 cannot be reached: 1 known node serves {TINY_MODEL} (with all-minilm-l6-v2): "
        "this node, 0 of its 0 peers. Fix: use --quorum 1 (fewer nodes to agree), or join a network "
        "with more nodes serving them (rakis node start --bootstrap /ip4/HOST/tcp/PORT/p2p/PEER_ID, "
        "or try a local one: rakis testnet up); --force submits anyway"
    ], r.output
    assert not key.exists()  # nothing signed: not even a client key was made
    assert _request_ids(lone_node) == before


def test_a_model_nobody_serves_is_refused_with_its_own_fix(lone_node, tmp_path):
    r = runner.invoke(
        app,
        ["submit", "hi", "--node", lone_node.url, "--model", "smollm2-135m-instruct", "--quorum", "1",
         "--key", str(tmp_path / "k")],
    )  # fmt: skip
    assert r.exit_code == 1
    assert "quorum 1 cannot be reached: 0 known nodes serve smollm2-135m-instruct" in r.output
    assert "start one that does (rakis node start --model NAME)" in r.output


def test_quorum_one_on_a_lone_node_succeeds(lone_node, tmp_path):
    """The fix the refusal names works: one node's answer, a real certificate."""
    r = _submit(lone_node, tmp_path / "client.key", "--quorum", "1", "--max-tokens", "8", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["state"] == "succeeded" and len(out["members"]) == 1, out
    assert "cannot be reached" not in r.output


def test_force_submits_a_quorum_that_cannot_be_reached(lone_node, tmp_path):
    r = _submit(lone_node, tmp_path / "client.key", "--quorum", "2", "--force", "--no-wait")
    assert r.exit_code == 0, r.output
    assert "warning: quorum 2 cannot be reached" in r.output and "submitting anyway (--force)" in r.output
    rid = r.output.strip().splitlines()[-1]
    assert rid in _request_ids(lone_node)
