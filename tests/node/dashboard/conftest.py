"""Dashboard tests reuse the API tests' in-memory facade, engines and live server."""

from tests.node.api.conftest import (  # noqa: F401 - fixtures, registered by import
    embedding_engine,
    facade,
    live_server,
    tiny_llm,
)
