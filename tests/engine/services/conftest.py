"""Fixtures for engine-service tests: trio by default, one torch thread, a tiny Llama."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


@pytest.fixture
def anyio_backend() -> str:
    # The daemon runs on trio; tests that also matter under asyncio parametrize this.
    return "trio"


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory):
    from tests.tiny_models import make_tiny_llama_dir

    return make_tiny_llama_dir(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture
def registry(tiny_llama_dir):
    from engine.registry import ModelRegistry

    return ModelRegistry({"tiny": tiny_llama_dir, "tiny-b": tiny_llama_dir})


_OUR_THREADS = ("engine-", "emb-", "llm-dispatch")


@pytest.fixture(autouse=True)
def no_leaked_worker_threads():
    """Every test must stop the workers it starts (scheduler, embedding, dispatcher threads)."""
    import threading
    import time

    before = {t.ident for t in threading.enumerate()}
    yield
    deadline = time.monotonic() + 5.0
    while True:
        leaked = [
            t.name
            for t in threading.enumerate()
            if t.ident not in before and t.is_alive() and t.name.startswith(_OUR_THREADS)
        ]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not leaked, f"threads left running: {leaked}"
