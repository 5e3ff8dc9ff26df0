"""HTTP API over the in-memory facade, in process (httpx ASGI transport, trio loop)."""

from __future__ import annotations

import base64
import json

import msgpack
import numpy as np
import pytest
from nacl.signing import SigningKey
from prometheus_client.parser import text_string_to_metric_families

from node import metrics, wire
from node.api.facade import NodeFacade
from node.orchestrator.errors import RequestRejected
from tests.node.api.conftest import ADMIN_TOKEN, TINY_MODEL, MemoryFacade, asgi_client, sign_request

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

RAW = {"content-type": "application/octet-stream"}


def tamper_signature(frame: bytes) -> bytes:
    payload, sig = msgpack.unpackb(frame)
    bad = bytes([sig[0] ^ 1]) + sig[1:]
    return msgpack.packb([payload, bad], use_bin_type=True)


def error_code(resp) -> str:
    body = resp.json()
    assert set(body) == {"error"}, body
    assert body["error"]["message"], body
    return body["error"]["code"]


def test_memory_facade_satisfies_the_protocol(facade: MemoryFacade) -> None:
    assert isinstance(facade, NodeFacade)


async def test_health_and_readiness(facade: MemoryFacade) -> None:
    async with asgi_client(facade) as c:
        r = await c.get("/healthz")
        assert r.status_code == 200 and r.json()["node_id"] == facade.identity.node_id
        assert (await c.get("/readyz")).status_code == 200
        facade.ready = False
        r = await c.get("/readyz")
        assert r.status_code == 503 and r.json() == {"ready": False}


async def test_submit_raw_and_json_frames_then_read_back(facade: MemoryFacade) -> None:
    async with asgi_client(facade) as c:
        frame = sign_request("one")
        r = await c.post("/v1/requests", content=frame, headers=RAW)
        assert r.status_code == 200, r.text
        rid = r.json()["request_id"]
        assert rid == wire.decode(frame).packet_id

        frame2 = sign_request("two")
        r = await c.post("/v1/requests", json={"frame": base64.b64encode(frame2).decode()})
        assert r.status_code == 200, r.text
        rid2 = r.json()["request_id"]

        # a duplicate of an accepted request returns its id again
        r = await c.post("/v1/requests", content=frame, headers=RAW)
        assert r.status_code == 200 and r.json()["request_id"] == rid

        got = (await c.get(f"/v1/requests/{rid}")).json()
        assert got["request_id"] == rid and got["state"] == "pending" and got["prompt"] == "one"
        listed = (await c.get("/v1/requests", params={"limit": 10})).json()["requests"]
        assert {x["request_id"] for x in listed} == {rid, rid2}
        assert len(facade.submitted_frames) == 2


@pytest.mark.parametrize(
    ("mangle", "code"),
    [
        (tamper_signature, "bad_signature"),
        (lambda f: b"\x00not msgpack at all", "malformed"),
        (lambda f: f[: len(f) // 2], "truncated"),
    ],
)
async def test_bad_frames_are_refused_with_the_wire_reason_and_never_gossiped(
    facade: MemoryFacade, mangle, code: str
) -> None:
    before = metrics.REGISTRY.get_sample_value("rakis_requests_rejected_total", {"reason": code}) or 0
    async with asgi_client(facade) as c:
        r = await c.post("/v1/requests", content=mangle(sign_request()), headers=RAW)
    assert r.status_code == 400, r.text
    assert error_code(r) == code
    assert code in r.json()["error"]["message"]
    assert facade.submitted_frames == [] and facade.requests == {}
    after = metrics.REGISTRY.get_sample_value("rakis_requests_rejected_total", {"reason": code})
    assert after == before + 1


async def test_stale_timestamp_and_other_packet_types_are_refused(facade: MemoryFacade) -> None:
    async with asgi_client(facade) as c:
        old = sign_request(ts_ms=1_000_000)
        r = await c.post("/v1/requests", content=old, headers=RAW)
        assert r.status_code == 400 and error_code(r) == "clock_skew"
        commit = wire.encode(
            wire.InferenceCommit(
                request_id="ab" * 32,
                inference_id="cd" * 16,
                commit=b"\x01" * 32,
                model=TINY_MODEL,
                model_hash="sha256:" + "ee" * 32,
            ),
            SigningKey.generate(),
        )
        r = await c.post("/v1/requests", content=commit, headers=RAW)
        assert r.status_code == 400 and error_code(r) == "not_a_request"
        facade.reject_next = RequestRejected("queue_full", "the request queue is full")
        r = await c.post("/v1/requests", content=sign_request(), headers=RAW)
        assert r.status_code == 503 and error_code(r) == "queue_full"
    assert facade.submitted_frames == []


async def test_bad_submit_bodies(facade: MemoryFacade) -> None:
    async with asgi_client(facade) as c:
        r = await c.post("/v1/requests", content=b"", headers=RAW)
        assert r.status_code == 400 and error_code(r) == "empty_body"
        r = await c.post("/v1/requests", json={"frame": "!!!not base64!!!"})
        assert r.status_code == 400 and error_code(r) == "invalid_base64"
        r = await c.post("/v1/requests", json={"frame": "AAAA", "extra": 1})
        assert r.status_code == 422 and error_code(r) == "invalid_body"
        r = await c.post("/v1/requests", json={"nope": 1})
        assert r.status_code == 422 and "frame" in r.json()["error"]["message"]
        r = await c.post("/v1/requests", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422
        r = await c.post("/v1/requests", content=b"x", headers={"content-type": "text/plain"})
        assert r.status_code == 415 and error_code(r) == "unsupported_media_type"
    assert facade.requests == {}


async def test_bodies_over_the_limit_get_413_before_being_read(facade: MemoryFacade) -> None:
    limit = facade.settings.wire.max_frame_bytes * 4 // 3 + 1024
    async with asgi_client(facade, max_body_bytes=4096) as c:
        r = await c.post("/v1/requests", content=b"\x00" * (limit + 1), headers=RAW)
        assert r.status_code == 413 and error_code(r) == "body_too_large"
        r = await c.post(
            "/v1/chat/completions", content=b" " * 5000, headers={"content-type": "application/json"}
        )
        assert r.status_code == 413 and error_code(r) == "body_too_large"
        # without Content-Length (chunked), the body is cut off once past the limit

        async def chunks():
            for _ in range(8):
                yield b" " * 1024

        r = await c.post(
            "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413 and error_code(r) == "body_too_large"
        # a frame within the HTTP limit but over the wire limit names the wire reason
        r = await c.post(
            "/v1/requests", content=b"\x00" * (facade.settings.wire.max_frame_bytes + 1), headers=RAW
        )
        assert r.status_code == 413 and error_code(r) == "oversize"
    assert facade.requests == {}


async def test_unknown_and_malformed_request_ids(facade: MemoryFacade) -> None:
    async with asgi_client(facade) as c:
        r = await c.get("/v1/requests/" + "ab" * 32)
        assert r.status_code == 404 and error_code(r) == "unknown_request"
        r = await c.get("/v1/requests/not-an-id")
        assert r.status_code == 422 and "request_id" in r.json()["error"]["message"]
        r = await c.get("/v1/nothing-here")
        assert r.status_code == 404 and error_code(r) == "not_found"
        r = await c.delete("/v1/requests")
        assert r.status_code == 405


async def test_finished_request_and_its_event_stream(facade: MemoryFacade) -> None:
    async with asgi_client(facade) as c:
        rid = (await c.post("/v1/requests", content=sign_request(), headers=RAW)).json()["request_id"]
        await facade.finish(
            rid,
            [
                ("aa" * 32, "Paris is the capital of France."),
                ("bb" * 32, "The capital of France is Paris."),
                ("cc" * 32, "Paris."),
                ("dd" * 32, "Bananas are yellow fruit rich in potassium."),
            ],
        )
        got = (await c.get(f"/v1/requests/{rid}")).json()
        assert got["state"] == "succeeded" and got["reason"] is None
        assert "Paris" in got["answer"]
        flags = {p["node_id"]: p["in_cluster"] for p in got["embedding_plot"]}
        assert flags["dd" * 32] is False and flags["aa" * 32] is True
        # the stream of a finished request: snapshot, final snapshot, end
        r = await c.get(f"/v1/requests/{rid}/events")
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
        assert events[0]["type"] == "snapshot" and events[-1]["final"] is True
        assert events[-1]["request"]["state"] == "succeeded"
        r = await c.get("/v1/requests/" + "ef" * 32 + "/events")
        assert r.status_code == 404


async def test_dashboard_feeds(facade: MemoryFacade) -> None:
    async with asgi_client(facade) as c:
        await c.post("/v1/requests", content=sign_request("find me"), headers=RAW)
        peers = (await c.get("/v1/peers")).json()["peers"]
        assert len(peers) == 2 and {"reputation", "models", "load"} <= set(peers[0])
        packets = (await c.get("/v1/packets", params={"limit": 5})).json()["packets"]
        assert packets[0]["type"] == "inference_request" and packets[0]["verdict"] == "accepted"
        logs = (await c.get("/v1/logs", params={"search": "request_accepted", "last_n": 5})).json()["logs"]
        assert len(logs) == 1
        assert (await c.get("/v1/logs", params={"search": "no-such-thing"})).json()["logs"] == []
        assert (await c.get("/v1/logs", params={"last_n": 0})).status_code == 422
        info = (await c.get("/v1/node")).json()
        assert info["node_id"] == facade.identity.node_id and info["peer_count"] == 2
        assert info["admin_enabled"] is True
        assert info["committee"] is None  # this facade runs no committee sortition
        html = await c.get("/")
        assert html.status_code == 200 and "<html" in html.text.lower()
        for asset in ("dashboard.js", "dashboard.css"):
            assert (await c.get(f"/static/{asset}")).status_code == 200


async def test_workers_scaling_needs_the_admin_token(facade: MemoryFacade) -> None:
    async with asgi_client(facade) as c:
        workers = (await c.get("/v1/workers")).json()["workers"]
        assert {w["model"] for w in workers} >= {TINY_MODEL, "all-minilm-l6-v2"}
        body = {"model": TINY_MODEL, "n": 2}
        r = await c.post("/v1/workers", json=body)
        assert r.status_code == 401 and error_code(r) == "missing_token"
        assert r.headers["www-authenticate"] == "Bearer"
        r = await c.post("/v1/workers", json=body, headers={"Authorization": "Bearer wrong-token-xxxxxxxx"})
        assert r.status_code == 403 and error_code(r) == "invalid_token"
        r = await c.post("/v1/workers", json=body, headers={"Authorization": f"Basic {ADMIN_TOKEN}"})
        assert r.status_code == 403
        assert facade.scaled == []
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        r = await c.post("/v1/workers", json=body, headers=auth)
        assert r.status_code == 200 and "workers" in r.json()
        assert facade.scaled == [(TINY_MODEL, 2)]
        r = await c.post("/v1/workers", json={"model": "nope", "n": 1}, headers=auth)
        assert r.status_code == 404 and error_code(r) == "model_not_found"
        assert "nope" in r.json()["error"]["message"] and facade.scaled == [(TINY_MODEL, 2)]
        r = await c.post("/v1/workers", json={"model": TINY_MODEL, "n": -1}, headers=auth)
        assert r.status_code == 422 and r.json()["error"]["param"] == "n"


async def test_admin_endpoints_disabled_without_a_token(facade: MemoryFacade, tmp_path) -> None:
    from node.config import load_settings

    facade.settings = load_settings(tmp_path / "other")
    async with asgi_client(facade) as c:
        r = await c.post(
            "/v1/workers", json={"model": TINY_MODEL, "n": 1}, headers={"Authorization": "Bearer x"}
        )
        assert r.status_code == 403 and error_code(r) == "admin_disabled"


async def test_metrics_is_valid_prometheus_text_and_counts(facade: MemoryFacade) -> None:
    async with asgi_client(facade) as c:
        before = (
            metrics.REGISTRY.get_sample_value("rakis_requests_submitted_total", {"verdict": "accepted"}) or 0
        )
        await c.post("/v1/requests", content=sign_request(), headers=RAW)
        r = await c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(r.text)}
        for name in (
            "rakis_requests_finished",
            "rakis_queue_depth",
            "rakis_tokens_per_second",
            "rakis_ttft_seconds",
            "rakis_kv_cache_usage_ratio",
            "rakis_prefix_cache_hit_ratio",
            "rakis_gossip_frames_in",
            "rakis_gossip_frames_out",
            "rakis_gossip_frames_rejected",
            "rakis_consensus_phase_seconds",
            "rakis_peers",
            "rakis_http_requests",
        ):
            assert name in families, name
        after = metrics.REGISTRY.get_sample_value("rakis_requests_submitted_total", {"verdict": "accepted"})
        assert after == before + 1
        assert metrics.REGISTRY.get_sample_value("rakis_peers") == 2
        http = metrics.REGISTRY.get_sample_value(
            "rakis_http_requests_total", {"route": "/v1/requests", "method": "POST", "status": "200"}
        )
        assert http and http >= 1


async def test_chat_completions(facade: MemoryFacade) -> None:
    body = {
        "model": TINY_MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 6,
        "temperature": 0,
    }
    async with asgi_client(facade) as c:
        r = await c.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["object"] == "chat.completion" and out["model"] == TINY_MODEL
        choice = out["choices"][0]
        assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
        assert out["usage"]["completion_tokens"] == 6 or choice["finish_reason"] == "stop"
        assert (
            out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
        )

        r = await c.post(
            "/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}
        )
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        chunks = [json.loads(x) for x in lines[:-1]]
        assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
        text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"])
        assert text == choice["message"]["content"]  # greedy: same answer streamed
        assert chunks[-1]["usage"]["completion_tokens"] == out["usage"]["completion_tokens"]


@pytest.mark.parametrize(
    ("patch", "status", "fragment"),
    [
        ({"model": "gpt-9"}, 404, "gpt-9"),
        ({"messages": []}, 422, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, 422, "role"),
        ({"temperature": 5}, 422, "temperature"),
        ({"top_p": 5e-324}, 422, "top_p"),  # 0 in the engine's float32
        ({"max_tokens": 10**6}, 400, "max_tokens"),
        ({"n": 2}, 400, "n > 1"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 422, "stop"),
    ],
)
async def test_chat_completions_bad_bodies(
    facade: MemoryFacade, patch: dict, status: int, fragment: str
) -> None:
    body = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "Hi"}], **patch}
    async with asgi_client(facade) as c:
        r = await c.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]["message"]


async def test_embeddings(facade: MemoryFacade) -> None:
    async with asgi_client(facade) as c:
        r = await c.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": ["a cat", "a dog"]})
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        vecs = np.array([d["embedding"] for d in data])
        assert vecs.shape == (2, 384) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-4)
        r = await c.post(
            "/v1/embeddings",
            json={"model": "all-minilm-l6-v2", "input": "a cat", "encoding_format": "base64"},
        )
        b64 = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
        assert np.allclose(b64, vecs[0], atol=1e-6)
        for body, status in [
            ({"model": "nope", "input": "x"}, 404),
            ({"model": "all-minilm-l6-v2", "input": [1, 2, 3]}, 422),
            ({"model": "all-minilm-l6-v2", "input": []}, 400),
            ({"model": "all-minilm-l6-v2"}, 422),
            ({"model": "all-minilm-l6-v2", "input": "x", "dimensions": 12}, 400),
        ]:
            r = await c.post("/v1/embeddings", json=body)
            assert r.status_code == status, (body, r.text)
        models = (await c.get("/v1/models")).json()
        assert {m["id"] for m in models["data"]} == {TINY_MODEL, "all-minilm-l6-v2"}


@pytest.mark.parametrize("path", ["/v1/requests", "/v1/chat/completions", "/v1/embeddings", "/v1/workers"])
async def test_no_5xx_for_junk_bodies(facade: MemoryFacade, path: str) -> None:
    junk = [
        b"",
        b"null",
        b"[]",
        b"{}",
        b'"x"',
        b"\xff\xfe",
        b"{" * 1000,
        json.dumps({"a": [1] * 100}).encode(),
    ]
    async with asgi_client(facade) as c:
        for body in junk:
            for ctype in ("application/json", "application/octet-stream", "text/plain"):
                r = await c.post(
                    path,
                    content=body,
                    headers={"content-type": ctype, "authorization": f"Bearer {ADMIN_TOKEN}"},
                )
                assert 400 <= r.status_code < 500, (path, body, ctype, r.status_code, r.text)
                assert "error" in r.json()


async def test_facade_values_that_are_not_plain_json_are_still_served(facade: MemoryFacade) -> None:
    from dataclasses import dataclass

    @dataclass
    class Rep:
        accepted: int
        score: float

    async with asgi_client(facade) as c:
        rid = (await c.post("/v1/requests", content=sign_request(), headers=RAW)).json()["request_id"]
        facade.requests[rid]["certificate"] = {
            "commit": b"\x01\xff",
            "score": float("nan"),
            "v": np.float32(0.5),
        }
        facade.peer_list[0]["reputation"] = Rep(3, 0.8)
        got = (await c.get(f"/v1/requests/{rid}")).json()
        assert got["certificate"] == {"commit": "01ff", "score": None, "v": 0.5}
        peers = (await c.get("/v1/peers")).json()["peers"]
        assert peers[0]["reputation"] == {"accepted": 3, "score": 0.8}
