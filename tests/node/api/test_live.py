"""The API served by Hypercorn's trio worker on 127.0.0.1: official openai client, SSE."""

from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import pytest
from openai import OpenAI

from node import metrics
from tests.node.api.conftest import TINY_MODEL, LiveServer, sign_request

pytestmark = pytest.mark.timeout(120)

OUTPUTS = [
    ("aa" * 32, "Paris is the capital of France."),
    ("bb" * 32, "The capital of France is Paris."),
    ("cc" * 32, "It is Paris."),
    ("dd" * 32, "Bananas are a good source of potassium."),
]


def openai_client(server: LiveServer) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_openai_client_chat_streaming_and_not(live_server: LiveServer) -> None:
    client = openai_client(live_server)
    messages = [{"role": "user", "content": "Say something."}]
    done = client.chat.completions.create(model=TINY_MODEL, messages=messages, max_tokens=8, temperature=0)
    text = done.choices[0].message.content
    assert done.choices[0].finish_reason in ("stop", "length") and done.usage.completion_tokens >= 1

    pieces, finish, usage = [], None, None
    stream = client.chat.completions.create(
        model=TINY_MODEL,
        messages=messages,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == text  # greedy: streaming and not agree
    assert finish == done.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == done.usage.completion_tokens

    models = {m.id for m in client.models.list()}
    assert {TINY_MODEL, "all-minilm-l6-v2"} <= models

    import openai

    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nope", messages=messages)
    assert "nope" in str(err.value)
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model=TINY_MODEL, messages=[])

    # the engine's work shows in /metrics (gauges and totals read at scrape time)
    text = httpx.get(f"{live_server.url}/metrics").text
    assert f'rakis_tokens_generated_total{{model="{TINY_MODEL}"}}' in text
    assert "rakis_kv_cache_usage_ratio{" in text
    assert metrics.REGISTRY.get_sample_value("rakis_ttft_seconds_count", {"model": TINY_MODEL}) >= 2


def test_openai_client_embeddings(live_server: LiveServer) -> None:
    client = openai_client(live_server)
    out = client.embeddings.create(model="all-minilm-l6-v2", input=["a cat", "a kitten", "a tax form"])
    vecs = np.array([d.embedding for d in out.data])  # the client asks for base64 and decodes it
    assert vecs.shape == (3, 384)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2]


def test_request_event_stream_follows_a_request_to_its_end(live_server: LiveServer) -> None:
    facade = live_server.facade
    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        rid = http.post(
            "/v1/requests", content=sign_request(), headers={"content-type": "application/octet-stream"}
        ).json()["request_id"]
        events: list[dict] = []
        subscribed = threading.Event()

        def read() -> None:
            with http.stream("GET", f"/v1/requests/{rid}/events") as r:
                assert r.headers["content-type"].startswith("text/event-stream")
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))
                        subscribed.set()

        reader = threading.Thread(target=read)
        reader.start()
        assert subscribed.wait(10)
        live_server.call(facade.set_stage, rid, "inferring")
        live_server.call(facade.finish, rid, OUTPUTS)
        reader.join(20)
        assert not reader.is_alive(), "the stream did not end after the final state"
    types = [e["type"] for e in events]
    assert types[0] == "snapshot" and events[0]["request"]["state"] == "pending"
    assert events[-1]["type"] == "snapshot" and events[-1]["final"] is True
    assert events[-1]["request"]["state"] == "succeeded"
    assert "stage" in types or "commit" in types  # live events arrived in between


def test_dashboard_event_stream_and_chunked_body_limit(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        got: list[dict] = []
        ready = threading.Event()

        def read() -> None:
            with http.stream("GET", "/v1/events") as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        got.append(json.loads(line[6:]))
                        ready.set()
                        if got[-1]["type"] == "request_accepted":
                            return

        reader = threading.Thread(target=read)
        reader.start()
        assert ready.wait(10) and got[0]["type"] == "hello"
        http.post(
            "/v1/requests", content=sign_request(), headers={"content-type": "application/octet-stream"}
        )
        reader.join(10)
        assert not reader.is_alive() and got[-1]["type"] == "request_accepted"
        # the subscription is dropped when the client goes away
        for _ in range(50):
            if not live_server.call(lambda: list(live_server.facade.subscribers)):
                break
            time.sleep(0.1)
        assert live_server.call(lambda: list(live_server.facade.subscribers)) == []

        # a chunked body (no Content-Length) is cut off once past the limit; the client
        # may see the 413 or, still sending, just the closed connection
        def chunks():
            for _ in range(64):
                yield b"x" * 65536

        try:
            r = http.post(
                "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
            )
            assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
        except (httpx.RemoteProtocolError, httpx.WriteError, httpx.ReadError):
            pass
    assert httpx.get(f"{live_server.url}/healthz").status_code == 200  # still serving
