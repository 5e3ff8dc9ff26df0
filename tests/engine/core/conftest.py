"""Fixtures for engine-core tests: one torch thread, a tiny random Llama and its HF twin."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory):
    from tests.tiny_models import make_tiny_llama_dir

    return make_tiny_llama_dir(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_hf(tiny_dir):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    m.eval()
    return m


@pytest.fixture
def make_engine(tiny_dir):
    """Factory for EngineCores on the tiny model; every engine made is stopped afterwards."""
    from engine.core import EngineCore

    made = []

    def factory(**kw):
        kw.setdefault("kv_cache_bytes", 16 << 20)
        eng = EngineCore(kw.pop("model_dir", tiny_dir), **kw)
        made.append(eng)
        return eng

    yield factory
    for eng in made:
        eng.stop()
