"""The signing client and the CLI's error paths, without models or daemons (fast)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from node import wire
from node.certificates import read_certificate, verify_certificate_data
from node.cli.app import app
from node.client import (
    ClientError,
    NodeClient,
    build_request,
    frame_request_id,
    load_or_create_client_key,
    result_summary,
    sign_request,
)
from node.identity import Identity
from node.testnet import NodeEntry, Testnet, _start_ticks, threads_per_node

runner = CliRunner()
DEAD_NODE = "http://127.0.0.1:9"  # discard port: nothing listens there


def test_client_key_is_created_private_and_reused(tmp_path):
    path = tmp_path / "cfg" / "rakis" / "client.key"
    first = load_or_create_client_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text().strip()) == 64
    again = load_or_create_client_key(path)
    assert again.node_id == first.node_id


def test_client_key_from_env(tmp_path, monkeypatch):
    path = tmp_path / "k" / "client.key"
    monkeypatch.setenv("RAKIS_CLIENT_KEY", str(path))
    ident = load_or_create_client_key()
    assert path.exists() and load_or_create_client_key(path).node_id == ident.node_id


def test_bad_client_key_is_an_error_and_left_alone(tmp_path):
    path = tmp_path / "client.key"
    path.write_text("not hex\n")
    with pytest.raises(ClientError, match="client key .* not hex"):
        load_or_create_client_key(path)
    path.write_text("ab" * 16 + "\n")
    with pytest.raises(ClientError, match="64 hex characters"):
        load_or_create_client_key(path)
    assert path.read_text() == "ab" * 16 + "\n"


def test_signed_request_decodes_to_what_was_built():
    ident = Identity.generate()
    body = build_request(
        "Why is the sky blue?",
        models=["smollm2-135m-instruct", "other-model"],
        quorum=4,
        max_time_s=30,
        sec_distance=0.3,
        sec_percentage=0.75,
        temperature=0.7,
        max_tokens=20,
        seed=7,
    )
    frame = sign_request(body, ident)
    pkt = wire.decode(frame)
    assert pkt.type == wire.PacketType.INFERENCE_REQUEST
    assert pkt.sender_id == ident.node_id  # signed by the client, not by a node
    assert pkt.body == body
    assert pkt.body.security_frame.max_time_ms == 30_000
    assert pkt.body.security_frame.embedding_model == "all-minilm-l6-v2"
    assert frame_request_id(frame) == pkt.packet_id == wire.request_id(pkt)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"quorum": 0}, "security_frame.quorum"),
        ({"sec_percentage": 1.5}, "security_frame.sec_percentage"),
        ({"sec_distance": -0.1}, "security_frame.sec_distance"),
        ({"sec_distance": 2.5}, "sec_distance"),
        ({"temperature": 3.0}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_time_s": 0}, "max_time"),
        ({"max_time_s": 10_000}, "max_time_ms"),
        ({"models": []}, "accepted_models"),
    ],
)
def test_bad_request_parameters_name_the_field(kwargs, field):
    with pytest.raises(ClientError, match=field.replace(".", r"\.")):
        build_request("hello", **kwargs)


def test_empty_prompt_is_refused():
    with pytest.raises(ClientError, match="prompt"):
        build_request("")


def test_result_summary_has_the_stable_keys():
    view = {
        "request_id": "ab" * 32,
        "state": "succeeded",
        "answer": "Paris.",
        "members": [{"node_id": "cd" * 32, "inference_id": "ef" * 16, "x": 1}],
        "reason": None,
    }
    out = result_summary(view)
    assert {"request_id", "state", "answer", "members", "reason"} <= out.keys()
    assert out["members"] == [{"node_id": "cd" * 32, "inference_id": "ef" * 16}]


def test_node_client_errors_are_clear():
    with pytest.raises(ClientError, match="http:// or https://"):
        NodeClient("127.0.0.1:8420")
    with NodeClient(DEAD_NODE, timeout=2) as c, pytest.raises(ClientError, match="cannot reach node"):
        c.get("ab" * 32)


def test_cli_submit_unreachable_node(tmp_path):
    r = runner.invoke(app, ["submit", "hi", "--node", DEAD_NODE, "--key", str(tmp_path / "k")])
    assert r.exit_code == 1
    assert "cannot reach node" in r.output


def test_cli_submit_bad_params_sign_nothing(tmp_path):
    r = runner.invoke(
        app, ["submit", "hi", "--node", DEAD_NODE, "--quorum", "0", "--key", str(tmp_path / "k")]
    )
    assert r.exit_code == 1
    assert "quorum" in r.output and "cannot reach" not in r.output


def test_cli_result_bad_id():
    r = runner.invoke(app, ["result", "xyz", "--node", DEAD_NODE])
    assert r.exit_code == 1 and "64 hex" in r.output


def test_cli_verify_unreadable_inputs(tmp_path):
    missing = runner.invoke(app, ["verify", str(tmp_path / "nope.json")])
    assert missing.exit_code == 1 and "cannot read" in missing.output
    (tmp_path / "bad.json").write_text("{not json")
    bad = runner.invoke(app, ["verify", str(tmp_path / "bad.json")])
    assert bad.exit_code == 1 and "not JSON" in bad.output
    (tmp_path / "empty.json").write_text("{}")
    empty = runner.invoke(app, ["verify", str(tmp_path / "empty.json")])
    assert empty.exit_code == 1 and "no certificate" in empty.output


def test_verify_failed_request_certificate_proves_nothing(tmp_path):
    frame = sign_request(build_request("hi", quorum=2), Identity.generate())
    import base64

    cert = {
        "version": 1,
        "request_frame": base64.b64encode(frame).decode(),
        "commit_frames": [],
        "reveal_frames": [],
        "result": None,
        "state": "failed",
        "reason": "not_enough_commits",
    }
    path = tmp_path / "failed.json"
    path.write_text(json.dumps({"request_id": "ab" * 32, "certificate": cert}))  # a saved view
    ok, problems, _ = verify_certificate_data(read_certificate(path))
    assert not ok and "did not succeed (failed: not_enough_commits)" in problems[0]
    r = runner.invoke(app, ["verify", str(path)])
    assert r.exit_code == 1 and "did not succeed" in r.output


def test_verify_forged_request_frame_fails_before_loading_models():
    frame = bytearray(sign_request(build_request("hi"), Identity.generate()))
    frame[-5] ^= 1
    import base64

    cert = {
        "version": 2,
        "request_frame": base64.b64encode(bytes(frame)).decode(),
        "commit_frames": [],
        "reveal_frames": [],
        "result": {
            "members": [],
            "representative": "x",
            "output": "y",
            "joint_hash": "z",
            "answer_rule": "max_log_likelihood",
            "recheck": "checked",
            "verdicts": {},
        },
    }
    ok, problems, _ = verify_certificate_data(cert, embed_fn=lambda texts: pytest.fail("no embedding"))
    assert not ok and "bad_signature" in problems[0]


def test_threads_per_node_never_oversubscribes():
    assert threads_per_node(3, cores=2) == 1
    assert threads_per_node(2, cores=8) == 4
    assert threads_per_node(1, cores=1) == 1


def test_down_stops_only_the_process_it_started(tmp_path):
    """A pid file whose start time does not match (pid reused) is never signalled."""
    tn = Testnet(tmp_path / "tn")
    entry = NodeEntry(
        name="node-0",
        data_dir=str(tmp_path / "tn" / "node-0"),
        api_port=9,
        p2p_port=9,
        node_id="ab" * 32,
        peer_id="x",
        torch_threads=1,
    )
    entry.dir.mkdir(parents=True)
    tn._save([entry])
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ticks = _start_ticks(proc.pid)
        assert ticks is not None
        (entry.dir / "daemon.pid").write_text(f"{proc.pid} {ticks + 1}\n")  # someone else's
        assert tn.status(check_ready=False)[0]["running"] is False
        assert tn.down(timeout=2)[0]["how"] == "not running"
        assert proc.poll() is None  # untouched
        (entry.dir / "daemon.pid").write_text(f"{proc.pid} {ticks}\n")  # ours
        assert tn.status(check_ready=False)[0]["pid"] == proc.pid
        tn._procs["node-0"] = proc
        assert tn.down(timeout=5)[0]["how"] == "terminated"
        assert proc.wait(timeout=5) == -15
        assert not (entry.dir / "daemon.pid").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (tmp_path / "tn" / ".gitignore").read_text() == "*\n"
    assert os.path.exists(tmp_path / "tn" / "testnet.json")


def test_testnet_fault_specs():
    from typer import BadParameter

    from node.cli.testnet_group import parse_faults

    assert parse_faults(["3=garbage", "0=off-topic"], 4) == {3: "garbage", 0: "off-topic"}
    assert parse_faults(None, 3) == {}
    for bad in ("3", "x=garbage", "1=evil", "4=silent"):
        with pytest.raises(BadParameter):
            parse_faults([bad], 4)


# ---- can the quorum be reached? (shapes as the node serves them) ------------------------------


def _peer(node_id: str, models=None, embedding_models=None) -> dict:
    from node.p2p.peers import PeerRecord

    rec = PeerRecord(
        node_id=node_id,
        peer_id=f"12D3KooW{node_id[:8]}",
        models=None if models is None else tuple(models),
        embedding_models=None if embedding_models is None else tuple(embedding_models),
    )
    return json.loads(json.dumps(rec.as_dict()))  # what GET /v1/peers carries


SELF = "aa" * 32
EMB = "all-minilm-l6-v2"
ME = {"node_id": SELF, "fault": "honest"}
MY_WORKERS = [
    {"kind": "llm", "model": "m1", "state": "ready"},
    {"kind": "llm", "model": "m2", "state": "failed"},
    {"kind": "embedding", "model": EMB, "state": "busy"},
]


def test_quorum_reach_counts_nodes_serving_an_accepted_model_and_the_embedding_model():
    from node.client import quorum_reach

    peers = [
        _peer("bb" * 32, ["m1"], [EMB]),
        _peer("bb" * 32, ["m1"], [EMB]),  # listed twice: one node
        _peer("cc" * 32, ["m2"], [EMB]),  # serves m2: counts only when m2 is accepted
        _peer("dd" * 32, ["m1"], ["other-embedder"]),  # cannot commit an embedding others check
        _peer(SELF, ["m1"], [EMB]),  # itself, if a node ever lists itself
    ]
    reach = quorum_reach(
        node=ME, workers=MY_WORKERS, peers=peers, models=["m1"], embedding_model=EMB, quorum=3
    )
    assert reach.serving == (SELF, "bb" * 32) and reach.self_serves and reach.peers == 3
    assert not reach.reachable and not reach.possible
    assert reach.summary(["m1"], EMB) == f"2 known nodes serve m1 (with {EMB}): this node, 1 of its 3 peers"
    both = quorum_reach(
        node=ME, workers=MY_WORKERS, peers=peers, models=["m1", "m2"], embedding_model=EMB, quorum=3
    )
    assert both.reachable and len(both.serving) == 3

    # m2's only local worker failed: the node itself does not serve m2.
    only_m2 = quorum_reach(
        node=ME, workers=MY_WORKERS, peers=[], models=["m2"], embedding_model=EMB, quorum=1
    )
    assert not only_m2.self_serves and not only_m2.reachable


def test_quorum_reach_counts_peers_that_have_not_announced_models_as_possible():
    """Just connected (no peer_info) or still loading (empty models): maybe, never no."""
    from node.client import quorum_reach

    peers = [_peer("bb" * 32), _peer("cc" * 32, [], [])]
    reach = quorum_reach(
        node=ME, workers=MY_WORKERS, peers=peers, models=["m1"], embedding_model=EMB, quorum=3
    )
    assert reach.unannounced == 2 and not reach.reachable and reach.possible


def test_quorum_reach_a_silent_node_does_not_count_itself():
    from node.client import quorum_reach

    silent = {**ME, "fault": "silent"}
    reach = quorum_reach(
        node=silent, workers=MY_WORKERS, peers=[], models=["m1"], embedding_model=EMB, quorum=1
    )
    assert reach.serving == () and not reach.reachable


def test_cli_submit_quorum_check_needs_a_reachable_node(tmp_path):
    """An unreachable node fails as before (the check is the first call), nothing signed."""
    key = tmp_path / "k"
    r = runner.invoke(app, ["submit", "hi", "--node", DEAD_NODE, "--key", str(key), "--force"])
    assert r.exit_code == 1 and "cannot reach node" in r.output
    assert not key.exists()
