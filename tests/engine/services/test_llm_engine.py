"""LLMEngine over real EngineCore workers running a tiny random Llama."""

from __future__ import annotations

import time

import anyio
import pytest

from engine.config import EngineConfig
from engine.engine_logs import LogType
from engine.llm_engine import LLMEngine, LLMRequest, ModelChoice, NoWorkerError, pick_model
from engine.registry import UnknownModelError
from engine.types import SamplingParams, TokenEvent

LONG = SamplingParams(max_tokens=400, ignore_eos=True)  # ~1-2 s on the tiny model


def make_engine(registry, max_batch_size: int = 2) -> LLMEngine:
    return LLMEngine(
        registry,
        device="cpu",
        config=EngineConfig(max_batch_size=max_batch_size, kv_cache_bytes=16 << 20),
    )


def req(prompt: str = "hello", sampling: SamplingParams | None = None, models="tiny", **kw) -> LLMRequest:
    return LLMRequest(models, prompt=prompt, sampling=sampling or SamplingParams(max_tokens=8), **kw)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"])
async def test_stream_and_non_stream(anyio_backend: str, registry) -> None:
    async with make_engine(registry) as eng:
        assert await eng.scale_workers("tiny", 1) == ["tiny#1"]
        assert eng.available_models() == ["tiny"]
        events: list[TokenEvent] = []
        async with eng.run_inference(req(sampling=SamplingParams(max_tokens=12, ignore_eos=True))) as s:
            async for ev in s:
                events.append(ev)
        assert [e.index for e in events] == list(range(12))
        r = s.result
        assert r.finish_reason == "length" and r.completion_tokens == 12
        assert r.token_ids == [e.token_id for e in events] and r.text == "".join(e.text for e in events)
        assert (r.model, r.worker_id) == ("tiny", "tiny#1")
        # Greedy output is deterministic: the non-streaming path gives the same tokens.
        again = await eng.run_inference_non_streaming(
            req(sampling=SamplingParams(max_tokens=12, ignore_eos=True))
        )
        assert again.token_ids == r.token_ids
        chat = await eng.run_inference_non_streaming(
            LLMRequest(
                "tiny", messages=[{"role": "user", "content": "hi"}], sampling=SamplingParams(max_tokens=3)
            )
        )
        assert chat.finish_reason in ("stop", "length") and chat.prompt_tokens > 5


@pytest.mark.anyio
async def test_abort_stops_stream_and_frees_worker(registry) -> None:
    async with make_engine(registry, max_batch_size=1) as eng:
        await eng.scale_workers("tiny", 1)
        stream = eng.run_inference(req(sampling=LONG, request_id="long-1"))
        first = await stream.__anext__()
        assert first.index == 0
        assert eng.worker_availability(["tiny"])["tiny"].available_workers == 0
        assert eng.abort("long-1") is True
        with anyio.fail_after(10):
            rest = [ev async for ev in stream]
        assert stream.result.finish_reason == "abort"
        assert stream.result.error == "aborted by caller"
        assert len(rest) + 1 < LONG.max_tokens
        avail = eng.worker_availability(["tiny"])["tiny"]
        assert (avail.available_workers, avail.active_requests) == (1, 0)
        assert eng.abort("long-1") is False  # already finished
        nxt = await eng.run_inference_non_streaming(req())
        assert nxt.finish_reason in ("stop", "length") and nxt.worker_id == "tiny#1"
        # Leaving a stream early aborts it too.
        async with eng.run_inference(req(sampling=LONG, request_id="long-2")) as s2:
            await s2.__anext__()
        assert s2.result.finish_reason == "abort"
        assert eng.worker_states()[0].active_requests == 0


@pytest.mark.anyio
async def test_expired_request_is_never_started(registry) -> None:
    async with make_engine(registry, max_batch_size=1) as eng:
        await eng.scale_workers("tiny", 1)
        async with anyio.create_task_group() as tg:
            blocker = eng.run_inference(req(sampling=LONG, request_id="blocker"))
            await blocker.__anext__()  # the only slot is now busy
            tg.start_soon(blocker.collect)
            late = await eng.run_inference_non_streaming(req(request_id="late", deadline=time.time() + 0.3))
            assert late.finish_reason == "expired" and late.worker_id is None
            assert late.completion_tokens == 0 and "never started" in late.error
            eng.abort("blocker")
        past = await eng.run_inference_non_streaming(req(request_id="past", deadline=time.time() - 1))
        assert past.finish_reason == "expired"
        for rid in ("late", "past"):
            types = [e.type for e in eng.search_logs(request_id=rid)]
            assert types == [LogType.QUEUED, LogType.EXPIRED]


@pytest.mark.anyio
async def test_queue_is_served_earliest_deadline_first(registry) -> None:
    async with make_engine(registry, max_batch_size=1) as eng:
        await eng.scale_workers("tiny", 1)
        now = time.time()
        async with anyio.create_task_group() as tg:
            blocker = eng.run_inference(req(sampling=LONG, request_id="blocker"))
            await blocker.__anext__()
            for rid, deadline in (("none", None), ("late", now + 120), ("soon", now + 60)):
                tg.start_soon(eng.run_inference_non_streaming, req(request_id=rid, deadline=deadline))
            await anyio.wait_all_tasks_blocked()
            assert eng.queue_depth() == 3
            eng.abort("blocker")
            await blocker.collect()
        starts = [e.request_id for e in eng.search_logs(type="start")]
        assert starts == ["blocker", "soon", "late", "none"]


@pytest.mark.anyio
async def test_scaling_up_and_down_while_requests_run_loses_nothing(registry) -> None:
    async with make_engine(registry, max_batch_size=2) as eng:
        await eng.scale_workers("tiny", 1)
        results = {}
        sampling = SamplingParams(max_tokens=60, ignore_eos=True)

        async def run(i: int) -> None:
            results[i] = await eng.run_inference_non_streaming(
                req(f"prompt {i}", sampling, request_id=f"r{i}")
            )

        async with anyio.create_task_group() as tg:
            for i in range(12):
                tg.start_soon(run, i)
            await anyio.wait_all_tasks_blocked()
            assert await eng.scale_workers("tiny", 3) == ["tiny#1", "tiny#2", "tiny#3"]
            await anyio.sleep(0.1)
            assert len(await eng.scale_workers("tiny", 1)) == 1  # drains the two it stops
            await anyio.sleep(0.1)
            await eng.scale_workers("tiny", 2)
        assert sorted(results) == list(range(12))
        assert all(r.finish_reason == "length" and r.completion_tokens == 60 for r in results.values())
        assert len({r.worker_id for r in results.values()}) >= 2  # the pool really grew
        assert len(eng.search_logs(type="unload")) == 2

        # Unloading with no time to drain aborts explicitly, with a reason.
        async with anyio.create_task_group() as tg:
            for i in range(12, 16):
                tg.start_soon(run, i)
            await anyio.wait_all_tasks_blocked()
            while eng.worker_availability(["tiny"])["tiny"].active_requests == 0:
                await anyio.sleep(0.01)
            await eng.scale_workers("tiny", 0, drain_timeout=0)
        assert sorted(results) == list(range(16))
        for i in range(12, 16):
            r = results[i]
            assert r.finish_reason in ("abort", "length")
            if r.finish_reason == "abort":
                assert r.error in ("worker unloaded", "no worker left for models tiny")
        assert any(results[i].finish_reason == "abort" for i in range(12, 16))
        assert eng.worker_states() == []


@pytest.mark.anyio
async def test_availability_reflects_loaded_and_busy_workers(registry) -> None:
    async with make_engine(registry, max_batch_size=1) as eng:
        a = eng.worker_availability(["tiny"])["tiny"]
        assert (a.workers, a.ready, a.available_workers) == (0, 0, 0)
        assert eng.available_models() == []
        async with anyio.create_task_group() as tg:
            tg.start_soon(eng.scale_workers, "tiny", 1)
            with anyio.fail_after(30):
                while eng.worker_availability(["tiny"])["tiny"].workers == 0:
                    await anyio.sleep(0.001)
            a = eng.worker_availability(["tiny"])["tiny"]
            assert (a.workers, a.loading, a.available_workers) == (1, 1, 0)
        a = eng.worker_availability(["tiny"])["tiny"]
        assert (a.ready, a.available_workers, a.free_slots) == (1, 1, 1)
        stream = eng.run_inference(req(sampling=LONG))
        await stream.__anext__()
        a = eng.worker_availability(["tiny"])["tiny"]
        assert (a.available_workers, a.free_slots, a.active_requests) == (0, 0, 1)
        assert eng.worker_states()[0].available is False
        await stream.aclose()
        a = eng.worker_availability(["tiny"])["tiny"]
        assert (a.available_workers, a.free_slots, a.active_requests) == (1, 1, 0)
        assert eng.worker_availability(["other"])["other"].workers == 0
        stats = eng.core_stats()
        assert list(stats) == ["tiny#1"] and stats["tiny#1"]["model"] == "tiny"
        assert stats["tiny#1"]["generated_tokens"] >= 1


@pytest.mark.anyio
async def test_log_search_filters_by_request_worker_and_type(registry) -> None:
    async with make_engine(registry, max_batch_size=1) as eng:
        await eng.scale_workers("tiny", 1)
        await eng.scale_workers("tiny-b", 1)
        ra = await eng.run_inference_non_streaming(req(models="tiny", request_id="a"))
        rb = await eng.run_inference_non_streaming(
            req(models="tiny-b", request_id="b", sampling=SamplingParams(max_tokens=40, ignore_eos=True))
        )
        assert (ra.worker_id, rb.worker_id) == ("tiny#1", "tiny-b#2")
        a_types = [e.type for e in eng.search_logs(request_id="a")]
        assert a_types == [LogType.QUEUED, LogType.START, LogType.FINISH]
        b_entries = eng.search_logs(request_id="b")
        assert [e.type for e in b_entries if e.type != LogType.PROGRESS] == [
            LogType.QUEUED,
            LogType.START,
            LogType.FINISH,
        ]
        assert [e.tokens for e in b_entries if e.type == LogType.PROGRESS] == [32]
        assert all(e.worker_id == "tiny-b#2" for e in b_entries if e.type != LogType.QUEUED)
        assert {e.request_id for e in eng.search_logs(worker_id="tiny#1")} == {None, "a"}
        assert [e.worker_id for e in eng.search_logs(type="load")] == ["tiny#1", "tiny-b#2"]
        assert [e.request_id for e in eng.search_logs(type="finish", worker_id="tiny-b#2")] == ["b"]
        fin = eng.search_logs(type="finish", request_id="b")[0]
        assert fin.tokens == 40 and fin.tokens_per_s > 0
        assert eng.logs(2) == eng.logs()[-2:]
        with pytest.raises(ValueError, match="unknown log type"):
            eng.search_logs(type="nope")


def test_model_choice_available_then_speed_then_load() -> None:
    def c(model, avail, tps, load):
        return ModelChoice(model, avail, tps, load)

    assert pick_model([c("a", 0, 99.0, 0.0), c("b", 1, 1.0, 0.9)]) == "b"  # available first
    assert pick_model([c("a", 1, 10.0, 0.0), c("b", 1, 50.0, 0.9)]) == "b"  # then speed
    assert pick_model([c("a", 2, 50.0, 0.5), c("b", 1, 50.0, 0.1)]) == "b"  # then load
    assert pick_model([c("a", 1, 50.0, 0.1), c("b", 1, None, 0.9)]) == "b"  # unmeasured gets tried
    assert pick_model([c("a", 1, 5.0, 0.0), c("b", 1, 5.0, 0.0)]) == "a"  # request's order breaks ties
    assert pick_model([c("a", 0, 5.0, 0.0)]) is None


@pytest.mark.anyio
async def test_requests_route_among_accepted_models(registry) -> None:
    async with make_engine(registry, max_batch_size=1) as eng:
        await eng.scale_workers("tiny", 1)
        await eng.scale_workers("tiny-b", 1)
        long_sampling = SamplingParams(max_tokens=150, ignore_eos=True)
        async with anyio.create_task_group() as tg:
            first = eng.run_inference(req(models=["tiny", "tiny-b"], sampling=long_sampling))
            await first.__anext__()
            second = eng.run_inference(
                req(models=["unknown-to-us", "tiny", "tiny-b"], sampling=long_sampling)
            )
            await second.__anext__()
            tg.start_soon(first.collect)
            tg.start_soon(second.collect)
        assert {first.result.model, second.result.model} == {"tiny", "tiny-b"}


@pytest.mark.anyio
async def test_bad_requests_fail_fast_and_queue_nothing(registry) -> None:
    async with make_engine(registry) as eng:
        with pytest.raises(NoWorkerError, match="no worker for any of the accepted models tiny"):
            eng.run_inference(req())
        await eng.scale_workers("tiny", 1)
        with pytest.raises(UnknownModelError, match="'gpt-9'.*available: .*smollm2-135m-instruct"):
            eng.run_inference(req(models=["gpt-9"]))
        with pytest.raises(UnknownModelError, match="'gpt-9'"):
            await eng.scale_workers("gpt-9", 1)
        with pytest.raises(ValueError, match="exactly one of messages, prompt"):
            eng.run_inference(LLMRequest("tiny", prompt="a", messages=[{"role": "user", "content": "b"}]))
        with pytest.raises(ValueError, match="max_tokens"):
            eng.run_inference(req(sampling=SamplingParams(max_tokens=0)))
        with pytest.raises(ValueError, match="worker count"):
            await eng.scale_workers("tiny", -2)
        stream = eng.run_inference(req(request_id="dup", sampling=LONG))
        with pytest.raises(ValueError, match="'dup' is already queued or running"):
            eng.run_inference(req(request_id="dup"))
        await stream.aclose()
        # A request the core itself refuses ends with finish_reason "error", not silence.
        bad = await eng.run_inference_non_streaming(LLMRequest("tiny", prompt_token_ids=[10**9]))
        assert bad.finish_reason == "error" and "prompt_token_ids" in bad.error
        assert eng.queue_depth() == 0


@pytest.mark.anyio
async def test_failed_load_is_reported_and_leaves_no_worker(tmp_path) -> None:
    from engine.registry import ModelRegistry

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')
    async with LLMEngine(ModelRegistry({"broken": broken}), device="cpu") as eng:
        with pytest.raises(RuntimeError, match=r"could not load 1 worker\(s\) of 'broken': broken#1"):
            await eng.scale_workers("broken", 1)
        assert eng.worker_states() == [] and eng.available_models() == []
        assert [e.worker_id for e in eng.search_logs(type="error")] == ["broken#1"]


@pytest.mark.slow
@pytest.mark.anyio
async def test_default_smollm2_through_the_registry() -> None:
    async with LLMEngine(device="cpu", config=EngineConfig(max_batch_size=4)) as eng:
        assert await eng.scale_workers("smollm2-135m-instruct", 1) == ["smollm2-135m-instruct#1"]
        r = await eng.run_inference_non_streaming(
            LLMRequest(
                ["not-here", "smollm2-135m-instruct"],
                messages=[{"role": "user", "content": "What is the capital of France?"}],
                sampling=SamplingParams(max_tokens=16),
            )
        )
    assert r.model == "smollm2-135m-instruct" and r.finish_reason in ("stop", "length")
    assert "Paris" in r.text


@pytest.mark.anyio
async def test_recheck_verdicts_and_model_hashes(registry) -> None:
    """`recheck` is awaited like run_inference: honest outputs pass, another seed's
    claim fails, and a model without a ready worker is "unavailable" (no verdict)."""
    from engine.types import RecheckRequest

    async with make_engine(registry, max_batch_size=4) as eng:
        await eng.scale_workers("tiny", 1)
        msgs = [{"role": "user", "content": "Tell me about rivers."}]
        sp = SamplingParams(temperature=0.8, top_p=0.9, seed=42, max_tokens=10)
        res = await eng.run_inference_non_streaming(LLMRequest("tiny", messages=msgs, sampling=sp))
        other = SamplingParams(temperature=0.8, top_p=0.9, seed=43, max_tokens=10)
        rcs = [
            RecheckRequest("honest", sp, messages=msgs, output_token_ids=res.token_ids, model="tiny"),
            RecheckRequest("seed", other, messages=msgs, output_token_ids=res.token_ids, model="tiny"),
            RecheckRequest("nomodel", sp, messages=msgs, output_token_ids=res.token_ids, model="tiny-b"),
            RecheckRequest("bad", sp, messages=msgs, output_token_ids=[-1], model="tiny"),
        ]
        honest, seed, nomodel, bad = await eng.recheck(rcs)
        assert (honest.request_id, honest.passed, honest.positions) == ("honest", True, len(res.token_ids))
        assert not seed.passed and seed.reason == "token_mismatch" and seed.checked
        assert not nomodel.passed and not nomodel.checked and "no ready worker" in (nomodel.error or "")
        assert not bad.checked and "bad_request" in (bad.error or "")
        assert await eng.recheck([]) == []
        assert any(e.type == LogType.RECHECK for e in eng.logs())
        hashes = eng.model_hashes()
        assert list(hashes) == ["tiny"] and hashes["tiny"].startswith("sha256:") and len(hashes["tiny"]) == 71
