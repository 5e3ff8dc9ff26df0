"""Two real model families on one network: two SmolLM2 nodes and one Gemma 3 270M node
(both shipped from PyPI). A request that accepts both is answered; one that accepts only
Gemma is answered by the Gemma node, and the SmolLM2 nodes, which cannot re-check Gemma's
output, follow it with ``recheck: unavailable``."""

from __future__ import annotations

import json

import pytest

from node.client import build_request, sign_request
from node.identity import Identity
from tests.daemon_helpers import EMBEDDING, Daemon, DaemonOptions, stop_all

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SMOL = "smollm2-135m-instruct"
GEMMA = "gemma3-270m"


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    # Loading Gemma (262k-token vocabulary) and a first-time GGUF conversion take a while.
    slow = DaemonOptions(model=SMOL, reveal_window_s=30, ready_timeout_s=600, final_timeout_s=240)
    a = Daemon(root / "a", slow)
    daemons = [a]
    try:
        a.start().wait_ready()
        b = Daemon(root / "b", slow, bootstrap=[a.addr])
        g = Daemon(
            root / "g",
            slow,
            bootstrap=[a.addr],
            env={"RAKIS_LLM_MODELS": json.dumps({GEMMA: 1, SMOL: 0})},
        )
        daemons += [b, g]
        for d in (b, g):
            d.start()
        for d in (b, g):
            d.wait_ready()
        for d in daemons:
            d.wait_for(lambda d=d: d.peer_count() >= 2, 120, "three nodes meshed")
        yield {"a": a, "b": b, "g": g}
    finally:
        stop_all(daemons)


def _frame(models: list[str], quorum: int) -> bytes:
    body = build_request(
        "Name a colour.",
        models=models,
        quorum=quorum,
        max_time_s=180,
        sec_distance=0.5,
        sec_percentage=1.0,
        max_tokens=12,
        embedding_model=EMBEDDING,
        commit_window_s=20,
    )
    return sign_request(body, Identity.generate())


def test_a_request_accepting_both_families_is_answered(families):
    a, b, g = families["a"], families["b"], families["g"]
    rid = a.submit(_frame([SMOL, GEMMA], quorum=2))
    views = [d.wait_final(rid, 240) for d in (a, b, g)]
    for v in views:
        assert v["state"] == "succeeded", (v["state"], v["reason"], v["reveals"])
    committed = {c["node_id"]: c["model"] for c in views[0]["commits"]}
    assert committed[g.node_id] == GEMMA and committed[a.node_id] == SMOL, committed
    # The SmolLM2 nodes cannot re-check the Gemma output, and say so.
    gemma_reveal = next(r for r in views[0]["reveals"] if r["node_id"] == g.node_id)
    assert gemma_reveal["recheck"]["status"] == "unavailable", gemma_reveal


def test_a_request_only_gemma_serves_is_answered_by_the_gemma_node(families):
    a, g = families["a"], families["g"]
    rid = a.submit(_frame([GEMMA], quorum=1))
    on_g, on_a = g.wait_final(rid, 240), a.wait_final(rid, 240)
    assert on_g["state"] == "succeeded", (on_g["reason"], on_g["reveals"])
    assert [m["node_id"] for m in on_g["members"]] == [g.node_id]
    assert on_g["recheck"] == "checked" and on_g["answer_rule"] == "max_log_likelihood"
    assert on_a["state"] == "succeeded" and on_a["answer"] == on_g["answer"]
    assert on_a["recheck"] == "unavailable"  # a holds no Gemma: clustering alone
