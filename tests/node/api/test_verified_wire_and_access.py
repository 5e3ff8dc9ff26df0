"""What the verified path relies on below the HTTP layer: multi-turn `inference_request`s
on the wire (optional fields that keep protocol-2 frames valid), `engine_input` building
the same conversation for generation and re-check, and the start-up refusal to serve
`/verified/v1` beyond loopback without API keys. (Kept here with the verified API tests;
they belong to tests/node/test_wire.py and tests/node/daemon when those files are open.)"""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from node import wire
from node.client import ClientError, build_request, sign_request
from node.config import load_settings
from node.daemon.compute import engine_input
from node.daemon.startup_errors import StartupError, check_api_keys, is_loopback_host
from node.identity import Identity

HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
]


def test_a_bare_prompt_frame_is_unchanged_and_means_one_user_message() -> None:
    body = build_request("Name a colour.", quorum=1)
    frame = sign_request(body, Identity.generate())
    payload = msgpack.unpackb(msgpack.unpackb(frame)[0])
    assert "messages" not in payload["body"] and "stop" not in payload["body"]  # v2 bytes
    assert payload["v"] == wire.PROTOCOL_VERSION == 2
    decoded = wire.decode(frame).body
    assert decoded.chat_messages() == [{"role": "user", "content": "Name a colour."}]
    messages, sampling = engine_input("ab" * 32, decoded)
    assert messages == [{"role": "user", "content": "Name a colour."}] and sampling.stop == []


def test_history_and_stop_travel_and_reach_the_engine_input() -> None:
    body = build_request("And you?", quorum=1, messages=HISTORY, stop=["\n\n", "END"], seed=4)
    decoded = wire.decode(sign_request(body, Identity.generate())).body
    assert decoded.chat_messages() == [*HISTORY, {"role": "user", "content": "And you?"}]
    messages, sampling = engine_input("cd" * 32, decoded)
    assert messages == decoded.chat_messages()
    assert sampling.stop == ["\n\n", "END"] and sampling.seed == 4


@pytest.mark.parametrize(
    ("kwargs", "where"),
    [
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
        ({"messages": [{"role": "user", "content": "x", "name": "n"}]}, "messages"),
        ({"messages": [{"role": "user", "content": "x" * 40_000}]}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}] * 65}, "messages"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_bad_messages_and_stops_are_refused_naming_the_field(kwargs: dict, where: str) -> None:
    with pytest.raises(ClientError, match=where):
        build_request("Hi", quorum=1, **kwargs)


def test_the_whole_conversation_shares_the_prompt_budget() -> None:
    limits = wire.WireLimits(max_prompt_chars=100)
    build_request("p" * 50, quorum=1, limits=limits, messages=[{"role": "user", "content": "m" * 50}])
    with pytest.raises(ClientError, match="over the limit of 100"):
        build_request("p" * 51, quorum=1, limits=limits, messages=[{"role": "user", "content": "m" * 50}])


def test_a_decoder_refuses_an_unknown_role_as_schema() -> None:
    body = build_request("Hi", quorum=1, messages=HISTORY)
    data = body.model_dump()
    data["messages"][0]["role"] = "robot"
    with pytest.raises(Exception):  # noqa: B017 - pydantic ValidationError
        wire.InferenceRequest.model_validate(data)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.5", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.0.0.2", False),
        ("::", False),
        ("example.org", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_beyond_loopback_the_node_refuses_to_start_without_api_keys(tmp_path: Path) -> None:
    check_api_keys(load_settings(tmp_path, api_host="127.0.0.1"))
    with pytest.raises(StartupError) as refused:
        check_api_keys(load_settings(tmp_path, api_host="0.0.0.0"))
    assert "api_keys" in str(refused.value) and "\n" not in str(refused.value)
    check_api_keys(load_settings(tmp_path, api_host="0.0.0.0", api_keys=["k" * 16]))
    check_api_keys(load_settings(tmp_path, api_host="0.0.0.0", verified={"enabled": False}))
