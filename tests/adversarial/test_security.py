"""Security checks: key files, admin token, loopback API, limits at the API and on gossip,
no secret in logs."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from node import identity, wire
from node.client import ClientError, load_or_create_client_key
from node.config import DEFAULT_CONFIG_TOML, load_settings
from node.identity import Identity, IdentityError
from node.logs import configure_logging, get_logger
from tests.node.p2p.conftest import Net, line, new_node, run_trio, wait_until

from .conftest import ADMIN_TOKEN, TINY_MODEL, InProcessNode, request_body

pytestmark = pytest.mark.timeout(240)

RAKIS = str(Path(sys.executable).with_name("rakis"))
BIG = wire.WireLimits(max_frame_bytes=1024 * 1024, max_prompt_chars=1_000_000)


# ---- key files -------------------------------------------------------------------------------


def test_node_key_is_created_0600_in_a_0700_directory(tmp_path):
    data = tmp_path / "fresh" / "node"
    ident = identity.load_or_create(data)
    key = identity.key_path(data)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) & 0o077 == 0
    assert identity.load(data).node_id == ident.node_id


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o666])
def test_node_key_readable_by_others_is_refused(tmp_path, mode):
    identity.load_or_create(tmp_path)
    key = identity.key_path(tmp_path)
    key.chmod(mode)
    with pytest.raises(IdentityError, match="chmod 600"):
        identity.load(tmp_path)
    with pytest.raises(IdentityError, match="chmod 600"):
        identity.load_or_create(tmp_path)  # never silently replaced or used


def test_daemon_refuses_to_start_with_a_world_readable_key(tmp_path):
    data = tmp_path / "node"
    ident = identity.load_or_create(data)
    key = identity.key_path(data)
    key.chmod(0o644)
    before = key.read_bytes()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAKIS_TORCH_THREADS": "1"}
    proc = subprocess.run(
        [
            RAKIS,
            "node",
            "start",
            "--data-dir",
            str(data),
            "--api",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "chmod 600" in out and str(key) in out, out[-2000:]
    assert "Traceback" not in out, out[-2000:]
    assert key.read_bytes() == before  # not replaced
    assert not (data / "node.json").exists()
    assert ident.seed.hex() not in out  # and the secret is not printed


def test_client_key_is_created_0600(tmp_path):
    path = tmp_path / "cfg" / "client.key"
    load_or_create_client_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0


def test_client_key_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "client.key"
    ident = load_or_create_client_key(path)
    path.chmod(0o644)
    with pytest.raises(ClientError, match="chmod 600") as err:
        load_or_create_client_key(path)
    assert ident.seed.hex() not in str(err.value)


# ---- admin token, loopback -------------------------------------------------------------------


def test_admin_endpoints_need_the_token(inprocess_node: InProcessNode):
    url = inprocess_node.url + "/v1/workers"
    body = {"model": TINY_MODEL, "n": 1}
    r = httpx.post(url, json=body, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_token", r.text
    for auth in (f"Bearer {ADMIN_TOKEN}x", f"Bearer {ADMIN_TOKEN[:-1]}", f"Basic {ADMIN_TOKEN}", ADMIN_TOKEN):
        r = httpx.post(url, json=body, headers={"authorization": auth}, timeout=30)
        assert r.status_code == 403 and r.json()["error"]["code"] == "invalid_token", (auth, r.text)
    r = httpx.post(url, json=body, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60)
    assert r.status_code == 200, r.text
    # With no token configured, admin endpoints are off altogether.
    facade = inprocess_node.facade
    settings = facade.settings
    inprocess_node.call(setattr, facade, "settings", settings.model_copy(update={"admin_token": None}))
    try:
        r = httpx.post(url, json=body, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled", r.text
    finally:
        inprocess_node.call(setattr, facade, "settings", settings)


def test_admin_token_shorter_than_16_characters_is_refused_by_the_config(tmp_path):
    from node.config import ConfigError

    with pytest.raises(ConfigError, match="admin_token"):
        load_settings(tmp_path, admin_token="short")


def _non_loopback_ipv4() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent; picks the outgoing interface
            addr = s.getsockname()[0]
    except OSError:
        return None
    return None if addr.startswith("127.") else addr


def test_api_binds_to_loopback_by_default(tmp_path, monkeypatch, inprocess_node: InProcessNode):
    for name in list(os.environ):
        if name.startswith("RAKIS_"):
            monkeypatch.delenv(name)
    assert load_settings(tmp_path).api_host == "127.0.0.1"
    assert 'api_host = "127.0.0.1"' in DEFAULT_CONFIG_TOML
    host, port = inprocess_node.url.removeprefix("http://").rsplit(":", 1)
    assert host == "127.0.0.1"
    other = _non_loopback_ipv4()
    if other is None:
        pytest.skip("no non-loopback IPv4 address on this machine")
    with socket.socket() as s:
        s.settimeout(3)
        assert s.connect_ex((other, int(port))) != 0, f"the API answers on {other}:{port}"


# ---- limits ----------------------------------------------------------------------------------


def test_prompt_and_frame_limits_at_the_api(inprocess_node: InProcessNode):
    url = inprocess_node.url
    key = Identity.generate().signing_key
    limits = inprocess_node.settings.wire
    too_long = wire.encode(request_body("x" * (limits.max_prompt_chars + 1), limits=BIG), key, limits=BIG)
    assert len(too_long) < limits.max_frame_bytes  # only the prompt is over its limit
    r = httpx.post(
        url + "/v1/requests", content=too_long, headers={"content-type": "application/octet-stream"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "limit", r.text
    assert "prompt" in r.json()["error"]["message"]
    huge = wire.encode(request_body("y" * 300_000, limits=BIG), key, limits=BIG)
    assert len(huge) > limits.max_frame_bytes
    r = httpx.post(url + "/v1/requests", content=huge, headers={"content-type": "application/octet-stream"})
    assert r.status_code == 413, r.text
    # Nothing was stored or gossiped for either.
    listed = httpx.get(url + "/v1/requests?limit=1000").json()["requests"]
    assert not any(len(rq.get("prompt") or "") > limits.max_prompt_chars for rq in listed)
    # The OpenAI endpoint: bounded by the body limit, and a prompt past the model's
    # context is a 4xx, not a crash.
    r = httpx.post(
        url + "/v1/chat/completions",
        json={
            "model": TINY_MODEL,
            "messages": [{"role": "user", "content": "z " * 600_000}],
            "max_tokens": 2,
        },
        timeout=60,
    )
    assert r.status_code == 413, r.text
    r = httpx.post(
        url + "/v1/chat/completions",
        json={
            "model": TINY_MODEL,
            "messages": [{"role": "user", "content": "word " * 5000}],
            "max_tokens": 2,
        },
        timeout=120,
    )
    assert 400 <= r.status_code < 500, r.text


def test_prompt_and_frame_limits_on_gossip():
    """A peer publishing an over-long prompt (frame under the size limit) or an oversized
    frame: the first node rejects both (limit / oversize) and relays neither."""

    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            attacker = await net.start(new_node(), collect=False)
            victim = await net.start(new_node())
            downstream = await net.start(new_node())
            await line(net, [attacker, victim, downstream])
            raw = attacker._pubsub
            raw.remove_topic_validator(attacker.config.topic)
            key = attacker.identity.signing_key
            long_prompt = wire.encode(
                request_body("p" * (wire.DEFAULT_LIMITS.max_prompt_chars + 1), limits=BIG), key, limits=BIG
            )
            oversized = wire.encode(request_body("q" * 300_000, limits=BIG), key, limits=BIG)
            for frame in (long_prompt, oversized):
                await raw.publish(attacker.config.topic, frame)
            await wait_until(
                lambda: victim.counters.rejected["limit"] == 1 and victim.counters.rejected["oversize"] == 1
            )
            await trio.sleep(1.0)
            assert not downstream.counters.rejected
            assert not any(len(p) > 1000 for p in net.prompts(victim) + net.prompts(downstream))
            nursery.cancel_scope.cancel()

    run_trio(body, timeout_s=60)


# ---- secrets in logs -------------------------------------------------------------------------


def test_secret_fields_are_redacted_by_the_log_configuration():
    stream = io.StringIO()
    configure_logging("debug", json=True, stream=stream)
    try:
        secret = Identity.generate().seed.hex()
        get_logger("adv").info(
            "loaded",
            seed=secret,
            admin_token=ADMIN_TOKEN,
            authorization=f"Bearer {ADMIN_TOKEN}",
            node_id="ok",
        )
    finally:
        configure_logging("info", json=True, stream=io.StringIO())
    out = stream.getvalue()
    assert secret not in out and ADMIN_TOKEN not in out, out
    assert json.loads(out.splitlines()[-1])["node_id"] == "ok"


def test_no_secret_in_logs_metrics_or_node_files(inprocess_node: InProcessNode):
    """Exercise the node (admin calls with right and wrong tokens, a request) while every
    log record is captured, then look for the node key and the admin token everywhere
    the node writes or serves text."""
    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(f"{record.getMessage()} {record.__dict__}")

    handler = Capture(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        url = inprocess_node.url
        auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        httpx.post(url + "/v1/workers", json={"model": TINY_MODEL, "n": 1}, headers=auth, timeout=60)
        httpx.post(url + "/v1/workers", json={"model": "nope", "n": 1}, headers=auth, timeout=60)
        httpx.post(
            url + "/v1/workers",
            json={"model": TINY_MODEL, "n": 1},
            headers={"authorization": "Bearer wrong-token-123456"},
        )
        frame = wire.encode(request_body("secrets?"), Identity.generate().signing_key)
        httpx.post(url + "/v1/requests", content=frame, headers={"content-type": "application/octet-stream"})
    finally:
        root.removeHandler(handler)
    data_dir = Path(inprocess_node.settings.data_dir)
    seed = identity.load(data_dir).seed.hex()
    served = [
        httpx.get(url + path, timeout=30).text
        for path in (
            "/v1/logs?last_n=10000",
            "/metrics",
            "/v1/node",
            "/v1/peers",
            "/v1/workers",
            "/v1/packets",
            "/healthz",
        )
    ]
    files = [
        p.read_text(errors="replace")
        for p in data_dir.iterdir()
        if p.is_file() and p.name != identity.KEY_FILENAME and not p.name.startswith("rakis.sqlite3")
    ]
    for secret in (seed, ADMIN_TOKEN):
        for i, text in enumerate(records + served + files):
            assert secret not in text, f"secret found in output #{i}: {text[:300]}"
