"""Fixtures for the foundation tests."""

from __future__ import annotations

import logging

import pytest
from nacl.signing import SigningKey

from node import wire
from tests.foundation.builders import sample_bodies


@pytest.fixture(scope="session")
def key() -> SigningKey:
    return SigningKey(b"\x11" * 32)


@pytest.fixture(scope="session")
def other_key() -> SigningKey:
    return SigningKey(b"\x22" * 32)


@pytest.fixture
def request_body() -> wire.InferenceRequest:
    body = sample_bodies()[0]
    assert isinstance(body, wire.InferenceRequest)
    return body


@pytest.fixture(autouse=True)
def restore_logging():
    """CLI and logging tests install a root handler; take it off again afterwards."""
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "rakis"]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
