"""`/verified/v1` and the certificate route over the in-memory facade (real wire codec,
real MiniLM clustering): what the call becomes on the wire, how final views map to
OpenAI replies and errors, the `rakis` overrides, API keys and per-caller limits.
The same path against real daemons and the official `openai` client is
tests/e2e/test_verified_openai.py."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from node import wire
from node.api.verified_calls import failure_of, progress_of
from node.config import load_settings
from tests.node.api.conftest import ADMIN_TOKEN, TINY_MODEL, MemoryFacade, asgi_client

pytestmark = pytest.mark.anyio
API_KEY = "verified-test-key-0123456789"
HONEST = [
    ("aa" * 32, "Paris is the capital."),
    ("bb" * 32, "Paris is the capital."),
    ("cc" * 32, "Paris is the capital."),
]


def chat(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": TINY_MODEL,
        "messages": [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And again?"},
        ],
        "temperature": 0,
        "max_tokens": 8,
        "stop": ["\n\n"],
        "rakis": {"quorum": 3, "max_time_s": 30, "commit_window_s": 5},
    }
    body.update(extra)
    return body


async def call_and_finish(
    client: httpx.AsyncClient, facade: MemoryFacade, body: dict[str, Any], outputs: list[tuple[str, str]]
) -> httpx.Response:
    """POST the call; once the request shows up on the facade, finish it with `outputs`."""
    out: dict[str, httpx.Response] = {}
    before = set(facade.requests)

    async def post() -> None:
        out["r"] = await client.post("/verified/v1/chat/completions", json=body)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(post)
        with trio.fail_after(20):
            while not set(facade.requests) - before and "r" not in out:
                await trio.sleep(0.05)
        new = set(facade.requests) - before
        if new:
            await facade.finish(new.pop(), outputs)
    return out["r"]


def only_frame(facade: MemoryFacade) -> wire.SignedPacket:
    assert len(facade.submitted_frames) == 1
    return wire.decode(facade.submitted_frames[0], limits=facade.settings.wire, check_time=False)


async def test_a_chat_call_becomes_a_client_signed_multi_turn_request(facade: MemoryFacade) -> None:
    async with asgi_client(facade) as client:
        r = await call_and_finish(client, facade, chat(), HONEST)
    assert r.status_code == 200, r.text
    done = r.json()
    pkt = only_frame(facade)
    rid = pkt.packet_id
    assert done["id"] == rid and r.headers["x-rakis-request-id"] == rid
    assert done["object"] == "chat.completion"
    assert done["choices"][0]["message"]["content"] == "Paris is the capital."
    assert done["choices"][0]["finish_reason"] in ("stop", "length")
    assert done["usage"]["total_tokens"] > 0 and done["model"] == TINY_MODEL
    assert done["rakis"]["request_id"] == rid and done["rakis"]["state"] == "succeeded"
    assert len(done["rakis"]["members"]) == 3
    assert done["rakis"]["certificate_url"] == f"http://node/v1/requests/{rid}/certificate"
    # The wire request: signed by the node's client key (not the node key), the system
    # prompt and history in `messages`, the last user turn the prompt, stop and overrides.
    body = pkt.body
    assert isinstance(body, wire.InferenceRequest)
    key_file = Path(facade.settings.data_dir) / "client.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert pkt.sender != bytes(facade.identity.signing_key.verify_key)
    assert body.prompt == "And again?"
    assert [(t.role, t.content) for t in body.messages or []] == [
        ("system", "Answer in one word."),
        ("user", "Capital of France?"),
        ("assistant", "Paris."),
    ]
    assert body.stop == ["\n\n"] and body.max_tokens == 8 and body.temperature == 0
    assert body.security_frame.quorum == 3 and body.security_frame.max_time_ms == 30_000
    assert body.security_frame.commit_window_ms == 5_000


async def test_settings_give_the_frame_when_the_call_does_not(facade: MemoryFacade) -> None:
    facade.settings = load_settings(
        facade.settings.data_dir,
        admin_token=ADMIN_TOKEN,
        llm_models={TINY_MODEL: 1},
        verified={"quorum": 2, "max_time_s": 40, "sec_distance": 0.3, "commit_window_s": 4},
    )
    async with asgi_client(facade) as client:
        r = await call_and_finish(client, facade, chat(rakis=None), HONEST[:2])
    assert r.status_code == 200, r.text
    frame = only_frame(facade).body.security_frame
    assert (frame.quorum, frame.max_time_ms, frame.sec_distance, frame.commit_window_ms) == (
        2,
        40_000,
        0.3,
        4_000,
    )


async def test_no_cluster_is_a_502_with_the_consensus_reason_and_request_id(facade: MemoryFacade) -> None:
    split = [("aa" * 32, "Paris."), ("bb" * 32, "Bananas are yellow fruit."), ("cc" * 32, "1 2 3 4 5 6 7")]
    async with asgi_client(facade) as client:
        r = await call_and_finish(client, facade, chat(), split)
    assert r.status_code == 502, r.text
    err = r.json()["error"]
    rid = only_frame(facade).packet_id
    assert err["code"] == "no_cluster_of_needed_size" and err["request_id"] == rid
    assert err["type"] == "server_error" and r.headers["x-rakis-request-id"] == rid


async def test_streaming_sends_progress_comments_then_chunks_then_done(facade: MemoryFacade) -> None:
    async with asgi_client(facade) as client:
        r = await call_and_finish(
            client, facade, chat(stream=True, stream_options={"include_usage": True}), HONEST
        )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in r.text.split("\n\n") if line]
    assert lines[0].startswith(": rakis request ")
    assert any(line.startswith(": stage=") and "committed=" in line for line in lines)
    data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Paris is the capital."
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["rakis"]["state"] == "succeeded"
    assert chunks[-1]["usage"]["total_tokens"] > 0


@pytest.mark.parametrize(
    ("rakis", "param"),
    [
        ({"quorum": 0}, "rakis.quorum"),
        ({"sec_distance": 3}, "rakis.sec_distance"),
        ({"sec_percentage": 0}, "rakis.sec_percentage"),
        ({"max_time_s": -1}, "rakis.max_time_s"),
        ({"seed": -5}, "rakis.seed"),
        ({"accepted_models": []}, "rakis.accepted_models"),
        ({"accepted_models": ["bad@name"]}, "rakis.accepted_models"),
        ({"qourum": 3}, "rakis.qourum"),
    ],
)
async def test_a_bad_rakis_option_is_a_400_naming_it(
    facade: MemoryFacade, rakis: dict[str, Any], param: str
) -> None:
    async with asgi_client(facade) as client:
        r = await client.post("/verified/v1/chat/completions", json=chat(rakis=rakis))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert facade.submitted_frames == []


async def test_options_the_network_does_not_carry_are_refused(facade: MemoryFacade) -> None:
    async with asgi_client(facade) as client:
        for extra, param in (
            ({"top_p": 0.5}, "top_p"),
            ({"n": 2}, "n"),
            ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
        ):
            r = await client.post("/verified/v1/chat/completions", json=chat(**extra))
            assert r.status_code in (400, 422), r.text
            assert r.json()["error"]["param"] == param, r.text
    assert facade.submitted_frames == []


async def test_a_model_no_node_serves_is_a_503_naming_it(facade: MemoryFacade) -> None:
    async with asgi_client(facade) as client:
        r = await client.post("/verified/v1/chat/completions", json=chat(model="no-such-model"))
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "model_not_served" and "no-such-model" in err["message"]
    assert TINY_MODEL in err["message"]  # what the network does serve
    assert facade.submitted_frames == []


async def test_network_models_count_the_nodes_serving_each(facade: MemoryFacade) -> None:
    digest = "sha256:" + "ab" * 32
    facade.peer_list.append(
        {
            **facade.peer_list[0],
            "node_id": "ee" * 32,
            "models": ["other-model"],
            "model_hashes": {"other-model": digest},
        }
    )
    async with asgi_client(facade) as client:
        r = await client.get("/verified/v1/models")
        emb = await client.post("/verified/v1/embeddings", json={"model": "x", "input": "y"})
    assert r.status_code == 200
    by_id = {m["id"]: m for m in r.json()["data"]}
    assert by_id[TINY_MODEL]["nodes"] == 3 and by_id[TINY_MODEL]["local"] is True
    assert by_id["other-model"]["nodes"] == 1 and by_id["other-model"]["local"] is False
    assert by_id["other-model"]["model_hashes"] == {digest: 1}
    assert emb.status_code == 404 and emb.json()["error"]["code"] == "not_offered"


async def test_certificate_route_serves_final_certificates_only(facade: MemoryFacade) -> None:
    async with asgi_client(facade) as client:
        unknown = await client.get(f"/v1/requests/{'0' * 64}/certificate")
        r = await call_and_finish(client, facade, chat(), HONEST)
        cert = await client.get(r.json()["rakis"]["certificate_url"].removeprefix("http://node"))
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_request"
    assert cert.status_code == 200 and cert.json()["request_id"] == r.json()["id"]
    facade.requests[r.json()["id"]].update(state="pending")
    async with asgi_client(facade) as client:
        pending = await client.get(f"/v1/requests/{r.json()['id']}/certificate")
    assert pending.status_code == 404 and pending.json()["error"]["code"] == "not_final"


async def test_api_keys_are_required_when_configured(facade: MemoryFacade) -> None:
    facade.settings = load_settings(
        facade.settings.data_dir, admin_token=ADMIN_TOKEN, llm_models={TINY_MODEL: 1}, api_keys=[API_KEY]
    )
    async with asgi_client(facade) as client:
        missing = await client.post("/verified/v1/chat/completions", json=chat())
        wrong = await client.post(
            "/verified/v1/chat/completions",
            json=chat(),
            headers={"Authorization": "Bearer wrong-key-000000000"},
        )
        models = await client.get("/verified/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
        # The key is checked before the body: an unauthenticated caller learns nothing else.
        bad_body = await client.post("/verified/v1/chat/completions", json={"model": 1})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    assert missing.json()["error"]["type"] == "authentication_error"
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert models.status_code == 200
    assert bad_body.status_code == 401
    assert facade.submitted_frames == []


async def test_callers_are_rate_limited_and_capped(facade: MemoryFacade) -> None:
    facade.settings = load_settings(
        facade.settings.data_dir,
        admin_token=ADMIN_TOKEN,
        llm_models={TINY_MODEL: 1},
        verified={"rate_limit_per_min": 1, "rate_limit_burst": 2, "max_concurrent": 1},
    )
    async with asgi_client(facade) as client:
        statuses: list[int] = []

        async def post(i: int) -> None:
            r = await client.post("/verified/v1/chat/completions", json=chat(seed=i, rakis={"max_time_s": 2}))
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.json()["error"]["code"] == "too_many_concurrent"
                assert r.json()["error"]["type"] == "rate_limit_error"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(post, 1)
            await trio.sleep(0.3)
            nursery.start_soon(post, 2)  # the first is still in flight: over the cap
            await trio.sleep(0.3)
            rid = next(iter(facade.requests))
            await facade.finish(rid, HONEST)
        r = await call_and_finish(client, facade, chat(seed=3), HONEST)  # the burst's 2nd token
        r2 = await client.post("/verified/v1/chat/completions", json=chat(seed=4))
    assert sorted(statuses) == [200, 429] or sorted(statuses) == [502, 429], statuses
    assert r.status_code in (200, 502)
    assert r2.status_code == 429 and r2.json()["error"]["code"] == "rate_limited"
    assert "retry-after" in r2.headers


def test_failure_mapping_of_expired_and_progress_counts() -> None:
    view = {
        "request_id": "ab" * 32,
        "state": "expired",
        "reason": "expired",
        "security_frame": {"quorum": 3},
        "commits": [{}, {}],
        "reveals": [{"recheck": {"status": "passed"}}, {"recheck": {"status": "failed"}}],
        "stage": "done",
    }
    err = failure_of(view)
    assert (err.status, err.code, err.request_id) == (504, "expired", "ab" * 32)
    assert progress_of(view) == {
        "state": "expired",
        "stage": "done",
        "quorum": 3,
        "committed": 2,
        "revealed": 2,
        "verified": 1,
    }
    view.update(state="failed", reason="not_enough_commits")
    err = failure_of(view)
    assert (err.status, err.code) == (502, "not_enough_commits")


def test_exact_answer_tokens_and_finish_reason_when_the_view_has_the_ids() -> None:
    from node.api.verified_calls import completion_of
    from node.client import build_request

    body = build_request("Hi", quorum=1, max_tokens=4)
    view = {
        "request_id": "cd" * 32,
        "state": "succeeded",
        "answer": "a b c d",
        "representative": "11" * 16,
        "members": [{"node_id": "aa" * 32, "inference_id": "11" * 16}],
        "reveals": [
            {"inference_id": "11" * 16, "node_id": "aa" * 32, "model": "m", "output_tokens": [1, 2, 3, 4]}
        ],
    }
    done = completion_of(view, body, "fallback", 0, "http://x/cert")
    assert done["usage"]["completion_tokens"] == 4 and done["model"] == "m"
    assert done["choices"][0]["finish_reason"] == "length"
    view["reveals"][0]["output_tokens"] = [1, 2]
    assert completion_of(view, body, "fallback", 0, "u")["choices"][0]["finish_reason"] == "stop"
