"""The user's path end to end, all through the `rakis` CLI as subprocesses:
`testnet up -n 3` (real daemons, real default models), `status --json`, `submit --json`,
`result`, `verify` on the produced certificate and on tampered ones, `workers list`,
`logs`, `testnet down`. One testnet for the module (loading the models three times
on a small machine dominates the run time); teardown stops it even when a test fails.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node.testnet import Testnet, _alive, threads_per_node

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

RAKIS = str(Path(sys.executable).with_name("rakis"))
_state: dict = {}


def rakis(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    full_env.update(env or {})
    return subprocess.run(
        [RAKIS, "--log-console", *args], capture_output=True, text=True, timeout=timeout, env=full_env
    )


@pytest.fixture(scope="module")
def testnet(tmp_path_factory):
    root = tmp_path_factory.mktemp("client-testnet")
    key = root / "client.key"
    env = {"RAKIS_CLIENT_KEY": str(key), "RAKIS_REVEAL_GRACE_S": "0.5"}
    try:
        r = rakis("testnet", "up", "-n", "3", "--dir", str(root / "net"), env=env, timeout=420)
        assert r.returncode == 0, r.stderr[-3000:]
        urls = r.stdout.split()
        assert len(urls) == 3 and all(u.startswith("http://127.0.0.1:") for u in urls)
        yield {"root": root / "net", "urls": urls, "env": env, "key": key}
    finally:
        rakis("testnet", "down", "--dir", str(root / "net"), timeout=120)
        for node in Testnet(root / "net").nodes():  # belt and braces: nothing may outlive the test
            rec = node.read_pid()
            if rec is not None and _alive(*rec):
                os.kill(rec[0], signal.SIGKILL)


def test_status_json_lists_ready_nodes(testnet):
    r = rakis("testnet", "status", "--dir", str(testnet["root"]), "--json")
    assert r.returncode == 0, r.stderr
    nodes = json.loads(r.stdout)
    assert [n["api_url"] for n in nodes] == testnet["urls"]
    for n in nodes:
        assert n["ready"] is True and n["running"] is True
        assert isinstance(n["pid"], int) and _alive(n["pid"], None)
        assert n["peers"] >= 2
        assert n["torch_threads"] == threads_per_node(3)
        info = json.loads((Path(n["data_dir"]) / "node.json").read_text())
        assert (info["pid"], info["peer_id"], info["api_url"]) == (n["pid"], n["peer_id"], n["api_url"])
    assert len({n["peer_id"] for n in nodes}) == 3
    _state["nodes"] = nodes


def test_second_up_in_same_dir_is_refused(testnet):
    r = rakis("testnet", "up", "-n", "2", "--dir", str(testnet["root"]))
    assert r.returncode == 1
    assert "already running" in r.stderr and "testnet down" in r.stderr
    after = json.loads(rakis("testnet", "status", "--dir", str(testnet["root"]), "--json").stdout)
    assert [n["pid"] for n in after] == [n["pid"] for n in _state["nodes"]]


def test_submit_json_reaches_consensus(testnet):
    cert = testnet["root"].parent / "cert.json"
    r = rakis(
        "submit",
        "What is the capital of France? Answer in one word.",
        "--node",
        testnet["urls"][1],
        "--quorum",
        "3",
        "--max-tokens",
        "16",
        "--max-time",
        "120",
        "--cert-out",
        str(cert),
        "--json",
        env=testnet["env"],
    )
    assert r.returncode == 0, (r.stdout, r.stderr[-3000:])
    out = json.loads(r.stdout)
    assert out["state"] == "succeeded" and out["reason"] is None
    assert out["answer"]
    assert len(out["request_id"]) == 64
    node_ids = {n["node_id"] for n in _state["nodes"]}
    assert {m["node_id"] for m in out["members"]} == node_ids
    assert all(len(m["inference_id"]) == 32 for m in out["members"])
    assert out["certificate_path"] == str(cert) and cert.exists()
    # Signed with the client's own key (created on first use), not a node key.
    assert testnet["key"].exists()
    from node.client import load_or_create_client_key

    client_id = load_or_create_client_key(testnet["key"]).node_id
    assert client_id not in node_ids
    _state.update(result=out, cert=cert, client_id=client_id)


def test_result_from_another_node(testnet):
    rid = _state["result"]["request_id"]
    r = rakis("result", rid, "--node", testnet["urls"][2], "--json", "--wait")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["state"], out["answer"]) == ("succeeded", _state["result"]["answer"])
    human = rakis("result", rid, "--node", testnet["urls"][0])
    assert human.returncode == 0 and rid in human.stdout and _state["result"]["answer"] in human.stdout


def test_workers_and_logs(testnet):
    r = rakis("workers", "list", "--node", testnet["urls"][0], "--json")
    assert r.returncode == 0, r.stderr
    workers = json.loads(r.stdout)["workers"]
    assert workers and any("smollm2" in json.dumps(w) for w in workers)
    refused = rakis("workers", "scale", "smollm2-135m-instruct", "2", "--node", testnet["urls"][0])
    assert refused.returncode == 1 and "admin token" in refused.stderr
    logs = rakis("logs", "--node", testnet["urls"][0], "--json", "--last", "50")
    assert logs.returncode == 0 and isinstance(json.loads(logs.stdout)["logs"], list)


def test_down_stops_exactly_the_started_daemons(testnet):
    pids = [n["pid"] for n in _state["nodes"]]
    r = rakis("testnet", "down", "--dir", str(testnet["root"]), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("terminated") + r.stdout.count("killed") == 3
    deadline = time.monotonic() + 10
    while any(_alive(p, None) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p, None) for p in pids)
    after = json.loads(rakis("testnet", "status", "--dir", str(testnet["root"]), "--json").stdout)
    assert [n["running"] for n in after] == [False] * 3 and [n["ready"] for n in after] == [False] * 3
    again = rakis("testnet", "down", "--dir", str(testnet["root"]))
    assert again.returncode == 0 and again.stdout.count("not running") == 3


def test_verify_certificate_and_tampered_ones(testnet):
    """Offline: runs after `down`, with nothing else on the CPU."""
    good = rakis("verify", str(_state["cert"]), "--json")
    assert good.returncode == 0, good.stderr
    report = json.loads(good.stdout)
    assert report["ok"] is True and report["problems"] == []
    assert report["client"] == _state["client_id"]
    assert report["computed_request_id"] == _state["result"]["request_id"]

    cert = json.loads(_state["cert"].read_text())
    lying = dict(cert, result=dict(cert["result"], output="The capital of France is Berlin."))
    path = _state["cert"].with_name("lying.json")
    path.write_text(json.dumps(lying))
    bad = rakis("verify", str(path))
    assert bad.returncode == 1
    assert "certificate FAILED" in bad.stderr
    assert "output is not the chosen member's revealed output" in bad.stderr

    # More forgeries checked in-process with one embedder (the CLI path is the same).
    from engine.embedding import load_embed_fn
    from node.certificates import verify_certificate_data

    embed = load_embed_fn()
    assert verify_certificate_data(cert, embed_fn=embed)[0] is True
    reveal = bytearray(base64.b64decode(cert["reveal_frames"][0]))
    reveal[-3] ^= 0x01
    forged = dict(cert, reveal_frames=[base64.b64encode(bytes(reveal)).decode(), *cert["reveal_frames"][1:]])
    ok, problems, _ = verify_certificate_data(forged, embed_fn=embed)
    assert not ok and any("does not open" in p and "bad_signature" in p for p in problems)
    dropped = dict(cert, commit_frames=cert["commit_frames"][1:])
    ok, problems, _ = verify_certificate_data(dropped, embed_fn=embed)
    assert not ok and problems
