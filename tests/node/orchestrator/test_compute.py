"""Fault injection as a ``Compute`` wrapper: only ``generate`` changes."""

from __future__ import annotations

import numpy as np
import pytest
import trio

from node.config import FaultMode
from node.orchestrator.compute import OFF_TOPIC_ANSWER, FaultyCompute, Generated, with_fault


class CountingCompute:
    """A stand-in engine that answers deterministically and counts its calls."""

    def __init__(self) -> None:
        self.generated = 0
        self.embedded: list[tuple[list[str], bool]] = []

    def llm_models(self) -> list[str]:
        return ["m1", "m2"]

    def embedding_models(self) -> list[str]:
        return ["emb"]

    async def generate(self, request_id, body, models, deadline_s):
        self.generated += 1
        return Generated(models[-1], "the honest answer", (1, 2, 3))

    async def embed(self, texts, *, model, consensus, deadline_s):
        self.embedded.append((texts, consensus))
        return np.ones((len(texts), 4), dtype=np.float32)


def test_output_faults_substitute_for_generate_and_keep_everything_else():
    inner = CountingCompute()
    garbage, off = FaultyCompute(inner, FaultMode.GARBAGE), FaultyCompute(inner, FaultMode.OFF_TOPIC)

    async def main():
        out = await garbage.generate("r", None, ["m1", "m2"], 0.0)
        assert out.model == "m1" and 12 <= len(out.text.split()) <= 30 and out.text != "the honest answer"
        assert out.token_ids is None  # no sampler drew it
        assert await off.generate("r", None, ["m2"], 0.0) == Generated("m2", OFF_TOPIC_ANSWER, None)
        vec = await off.embed(["x"], model="emb", consensus=True, deadline_s=None)
        assert vec.shape == (1, 4)

    trio.run(main)
    assert inner.generated == 0
    assert inner.embedded == [(["x"], True)]
    assert garbage.llm_models() == ["m1", "m2"] and garbage.embedding_models() == ["emb"]


def test_with_fault_wraps_only_output_faults():
    inner = CountingCompute()
    assert with_fault(inner, FaultMode.HONEST) is inner
    assert with_fault(inner, FaultMode.SILENT) is inner  # silent is the orchestrator's policy
    assert with_fault(None, FaultMode.GARBAGE) is None
    assert isinstance(with_fault(inner, FaultMode.OFF_TOPIC), FaultyCompute)
    with pytest.raises(ValueError, match="garbage or off-topic"):
        FaultyCompute(inner, FaultMode.SILENT)
