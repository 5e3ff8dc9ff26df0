"""CLI progress tests follow a live in-memory node: reuse the API tests' fixtures."""

from tests.node.api.conftest import (  # noqa: F401 - fixtures, registered by import
    embedding_engine,
    facade,
    live_server,
    tiny_llm,
)
