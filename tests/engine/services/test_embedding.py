"""EmbeddingEngine with the packaged all-MiniLM-L6-v2 (real model, offline)."""

from __future__ import annotations

import time

import anyio
import numpy as np
import pytest

from engine.embedding import EmbeddingEngine, JobExpiredError, Priority
from engine.model_files import minilm_dir
from engine.registry import UnknownModelError

MODEL = "all-minilm-l6-v2"
TEXTS = [
    "The capital of France is Paris.",
    "Paris is France's capital city, on the Seine.",
    "A short one.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen in plants.",
    "",
    "Ünïcödé and emoji 🚀 survive tokenization.",
]


@pytest.fixture(scope="module")
def reference_model():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir()), device="cpu")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"])
async def test_embeddings_match_sentence_transformers(anyio_backend: str, reference_model) -> None:
    expected = reference_model.encode(TEXTS, convert_to_numpy=True)
    async with EmbeddingEngine(device="cpu", max_batch_texts=64) as eng:
        await eng.scale_workers(MODEL, 1)
        # Several jobs queued together ride in one batch; each still gets its own rows.
        results: dict[int, object] = {}

        async def one(i: int, chunk: list[str]) -> None:
            results[i] = await eng.embed(chunk, model=MODEL)

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, 0, TEXTS[:2])
            tg.start_soon(one, 1, TEXTS[2:5])
            tg.start_soon(one, 2, TEXTS[5:])
        hashes = eng.model_hashes()
    from engine.model_files import weights_hash

    assert hashes == {MODEL: weights_hash(minilm_dir() / "model.safetensors")}
    got = np.concatenate([results[i].vectors for i in range(3)])
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    r = results[0]
    assert r.normalized  # MiniLM's pipeline ends in Normalize
    np.testing.assert_allclose(np.linalg.norm(r.vectors, axis=1), 1.0, atol=1e-5)
    assert r.binary.dtype == np.uint8 and r.binary.shape == (2, 48)
    assert np.array_equal(r.binary, np.packbits(r.vectors > 0, axis=1))


@pytest.mark.anyio
async def test_consensus_job_submitted_after_50_queued_ordinary_jobs_finishes_first() -> None:
    order: list[str] = []
    async with EmbeddingEngine(device="cpu", max_batch_texts=8) as eng:
        # No worker yet: everything waits in the queue, so "queued" is exact.
        async def job(tag: str, priority: Priority) -> None:
            await eng.embed([f"text {tag}", f"more {tag}"], model=MODEL, priority=priority)
            order.append(tag)

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(job, f"normal-{i}", Priority.NORMAL)
            await anyio.wait_all_tasks_blocked()
            assert eng.queue_depth() == {MODEL: 50}
            tg.start_soon(job, "consensus", Priority.CONSENSUS)
            await anyio.wait_all_tasks_blocked()
            assert eng.queue_depth() == {MODEL: 51}
            await eng.scale_workers(MODEL, 1)
        starts = eng.search_logs(type="start")
    assert len(order) == 51
    assert order[0] == "consensus"
    # The consensus job rode alone: batches never mix priority classes.
    first = starts[0]
    assert "priority consensus, batch of 2" in first.message


@pytest.mark.anyio
async def test_expired_job_is_dropped_with_reason_and_never_started() -> None:
    async with EmbeddingEngine(device="cpu") as eng:
        # Deadline passes while queued (no worker yet).
        with pytest.raises(JobExpiredError, match="expired .* not started"):
            await eng.embed(["late"], model=MODEL, deadline=time.time() + 0.2)
        await eng.scale_workers(MODEL, 1)
        # Already past when a worker meets it.
        with pytest.raises(JobExpiredError, match="not started"):
            await eng.embed(["too late"], model=MODEL, deadline=time.time() - 1)
        ok = await eng.embed(["in time"], model=MODEL, deadline=time.time() + 60)
        assert ok.vectors.shape == (1, 384)
        expired = eng.search_logs(type="expired")
        assert len(expired) == 2
        started = {e.request_id for e in eng.search_logs(type="start")}
        assert not started.intersection(e.request_id for e in expired)


@pytest.mark.anyio
async def test_scaling_while_jobs_run_loses_nothing() -> None:
    async with EmbeddingEngine(device="cpu", max_batch_texts=4) as eng:
        await eng.scale_workers(MODEL, 2)
        done: list[int] = []

        async def job(i: int) -> None:
            r = await eng.embed([f"sentence number {i}", "x"], model=MODEL)
            assert r.vectors.shape == (2, 384)
            done.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(job, i)
            await anyio.sleep(0.05)
            assert await eng.scale_workers(MODEL, 1) == [s.worker_id for s in eng.worker_states()]
            await eng.scale_workers(MODEL, 2)
        assert sorted(done) == list(range(30))
        assert len(eng.worker_states()) == 2
        assert len(eng.search_logs(type="unload")) == 1


@pytest.mark.anyio
async def test_bad_input_is_refused_and_changes_nothing() -> None:
    async with EmbeddingEngine(device="cpu") as eng:
        with pytest.raises(TypeError, match="not a single string"):
            await eng.embed("just a string", model=MODEL)
        with pytest.raises(ValueError, match="texts is empty"):
            await eng.embed([], model=MODEL)
        with pytest.raises(TypeError, match=r"texts\[1\] is int"):
            await eng.embed(["a", 3], model=MODEL)
        with pytest.raises(UnknownModelError, match="'nomic-embed'.*available: all-minilm-l6-v2"):
            await eng.embed(["a"], model="nomic-embed")
        with pytest.raises(ValueError, match="unknown priority"):
            await eng.embed(["a"], model=MODEL, priority=7)
        with pytest.raises(ValueError, match="worker count"):
            await eng.scale_workers(MODEL, -1)
        assert eng.queue_depth() == {}


@pytest.mark.anyio
async def test_blocking_embed_fn_matches_engine() -> None:
    from engine import load_embed_fn

    fn = load_embed_fn(device="cpu")
    async with EmbeddingEngine(device="cpu") as eng:
        await eng.scale_workers(MODEL, 1)
        r = await eng.embed(TEXTS, model=MODEL, priority=Priority.CONSENSUS)
    np.testing.assert_allclose(fn(TEXTS), r.vectors, atol=1e-5, rtol=0)


@pytest.mark.anyio
async def test_concurrent_scale_calls_agree_on_the_count() -> None:
    async with EmbeddingEngine(device="cpu") as eng:
        async with anyio.create_task_group() as tg:
            tg.start_soon(eng.scale_workers, MODEL, 2)
            tg.start_soon(eng.scale_workers, MODEL, 2)
        assert len(eng.worker_states()) == 2
        async with anyio.create_task_group() as tg:
            tg.start_soon(eng.scale_workers, MODEL, 1)
            tg.start_soon(eng.scale_workers, MODEL, 1)
        assert [s.state for s in eng.worker_states()] == ["ready"]
