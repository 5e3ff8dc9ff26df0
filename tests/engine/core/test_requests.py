"""Request life cycle: streaming, abort, deadlines, seeds, stop strings, bad input."""

from __future__ import annotations

import threading
import time

import pytest

from engine.core import GenerationRequest, GenerationResult, SamplingParams, TokenEvent
from engine.detok import IncrementalDetokenizer

pytestmark = pytest.mark.timeout(120)


def _req(rid: str, max_tokens: int = 16, **kw) -> GenerationRequest:
    sampling = kw.pop("sampling", None) or SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    return GenerationRequest(
        rid, sampling, messages=[{"role": "user", "content": kw.pop("q", "Tell me a story.")}], **kw
    )


def test_stream_events_and_listener(make_engine):
    eng = make_engine()
    eng.start()
    s = eng.submit(_req("s", 12))
    got = []
    done = threading.Event()

    def listener(ev):
        got.append(ev)
        if isinstance(ev, GenerationResult):
            done.set()

    s.add_listener(listener)
    events = list(s)
    res = s.result(timeout=30)
    assert done.wait(10)
    assert [e.index for e in events] == list(range(12))
    assert [e.token_id for e in events] == res.token_ids
    assert "".join(e.text for e in events) == res.text
    assert got[-1] is res and [e.token_id for e in got[:-1]] == res.token_ids
    assert isinstance(s.get(timeout=1), GenerationResult)  # the result stays readable


def test_abort_frees_blocks_at_once(make_engine):
    eng = make_engine(enable_prefix_cache=False)
    eng.start()
    s = eng.submit(_req("long", 500))
    assert isinstance(s.get(timeout=30), TokenEvent)
    assert eng.abort("long") is True
    res = s.result(timeout=30)
    assert res.finish_reason == "abort"
    assert 1 <= res.completion_tokens < 500
    assert eng.allocator.num_used == 0
    assert eng.abort("long") is False
    assert eng.abort("never-existed") is False


def test_abort_before_start(make_engine):
    eng = make_engine()
    s = eng.submit(_req("queued"))
    assert eng.abort("queued")
    assert s.result(timeout=5).finish_reason == "abort"


def test_expired_never_runs(make_engine):
    eng = make_engine()
    eng.start()
    s = eng.submit(_req("late", deadline=time.time() - 1))
    res = s.result(timeout=30)
    assert res.finish_reason == "expired"
    assert res.completion_tokens == 0 and res.token_ids == [] and res.ttft_s is None
    assert eng.stats()["steps"] == 0


def test_waiting_queue_is_deadline_ordered(make_engine):
    eng = make_engine(max_batch_size=1)
    now = time.time()
    order = []
    streams = []
    for rid, dl in [("c", now + 300), ("none", None), ("a", now + 100), ("b", now + 200)]:
        st = eng.submit(_req(rid, 3, deadline=dl))
        st.add_listener(lambda ev, rid=rid: isinstance(ev, GenerationResult) and order.append(rid))
        streams.append(st)
    eng.start()
    for st in streams:
        st.result(timeout=60)
    assert order == ["a", "b", "c", "none"]


def _sampled(rid: str, seed: int) -> GenerationRequest:
    return _req(
        rid,
        sampling=SamplingParams(
            temperature=0.9, top_p=0.95, top_k=50, seed=seed, max_tokens=12, ignore_eos=True
        ),
    )


def test_seeded_sampling_independent_of_batch(make_engine):
    eng = make_engine()
    alone = eng.generate([_sampled("alone", 7)])[0]
    others = [_req(f"o{i}", 20, q=f"Other question {i}") for i in range(3)]
    batch = eng.generate([*others[:2], _sampled("in-batch", 7), others[2]])
    assert batch[2].token_ids == alone.token_ids
    other_seed = eng.generate([_sampled("s8", 8)])[0]
    assert other_seed.token_ids != alone.token_ids


def test_stop_string_cuts_text(make_engine):
    eng = make_engine()
    base = eng.generate([_req("base", 20)])[0]
    assert len(base.text) > 6
    stop = base.text[3:6]
    s = eng.submit(
        GenerationRequest(
            "stop",
            SamplingParams(max_tokens=20, stop=[stop], ignore_eos=True),
            messages=[{"role": "user", "content": "Tell me a story."}],
        )
    )
    eng.start()
    events = list(s)
    res = s.result(timeout=30)
    assert res.finish_reason == "stop"
    assert res.text == base.text[: base.text.index(stop)]
    assert "".join(e.text for e in events) == res.text
    assert res.token_ids == base.token_ids[: len(res.token_ids)]


def test_detokenizer_multibyte_and_stop(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    text = "héllo 🙂 wörld — 日本語 ok"
    ids = tok(text, add_special_tokens=False).input_ids
    d = IncrementalDetokenizer(tok, [], set(tok.all_special_ids))
    deltas = [d.add(i)[0] for i in ids]
    deltas.append(d.flush())
    assert "".join(deltas) == text
    assert not any("\ufffd" in x for x in deltas)
    d = IncrementalDetokenizer(tok, ["wör"], set(tok.all_special_ids))
    out = []
    for i in ids:
        delta, stopped = d.add(i)
        out.append(delta)
        if stopped:
            break
    assert stopped and "".join(out) == "héllo 🙂 "


def test_bad_requests_are_rejected_and_change_nothing(make_engine):
    eng = make_engine()
    bad = [
        GenerationRequest("x", SamplingParams(temperature=-1), prompt="hi"),
        GenerationRequest("x", SamplingParams(top_p=0), prompt="hi"),
        GenerationRequest("x", SamplingParams(max_tokens=0), prompt="hi"),
        GenerationRequest("x", SamplingParams(stop=[""]), prompt="hi"),
        GenerationRequest("x", SamplingParams(), prompt="hi", messages=[{"role": "user", "content": "hi"}]),
        GenerationRequest("x", SamplingParams()),
        GenerationRequest("x", SamplingParams(), prompt_token_ids=[]),
        GenerationRequest("x", SamplingParams(), prompt_token_ids=[10**9]),
        GenerationRequest("x", SamplingParams(), messages=[{"content": "no role"}]),
        GenerationRequest("", SamplingParams(), prompt="hi"),
        GenerationRequest("x", SamplingParams(), prompt_token_ids=[5] * 100_000),
    ]
    for r in bad:
        with pytest.raises(ValueError):
            eng.submit(r)
    assert eng.stats()["waiting"] == 0
    eng.submit(_req("dup"))
    with pytest.raises(ValueError, match="already active"):
        eng.submit(_req("dup"))
    assert eng.stats()["waiting"] == 1


def test_stop_without_abort_finishes_work(make_engine):
    eng = make_engine()
    eng.start()
    streams = [eng.submit(_req(f"w{i}", 6)) for i in range(3)]
    eng.stop(abort_pending=False)
    assert all(s.result(timeout=1).finish_reason == "length" for s in streams)
    s = eng.submit(_req("after"))
    eng.stop()
    assert s.result(timeout=5).finish_reason == "abort"


def test_concurrent_submit_and_abort_storm(make_engine):
    """Many threads submit and abort at once: every stream ends with exactly one result,
    no block leaks, and the worker keeps serving afterwards."""
    import random

    eng = make_engine(max_batch_size=6, max_num_batched_tokens=64, block_size=4)
    eng.start()
    results = {}
    lock = threading.Lock()

    def client(c: int) -> None:
        rng = random.Random(c)
        mine = []
        for i in range(8):
            rid = f"c{c}-{i}"
            mine.append((rid, eng.submit(_req(rid, rng.randint(1, 30), q=f"client {c} asks {i}"))))
            if rng.random() < 0.4:
                eng.abort(mine[rng.randrange(len(mine))][0])
        for rid, s in mine:
            r = s.result(timeout=90)
            with lock:
                results[rid] = r

    threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 32
    assert {r.finish_reason for r in results.values()} <= {"length", "abort"}
    assert all(r.completion_tokens == len(r.token_ids) for r in results.values())
    st = eng.stats()
    assert st["running"] == 0 and st["waiting"] == 0
    assert eng.allocator.num_used == eng.radix.num_blocks
    eng.allocator.check_consistency()
    assert eng.generate([_req("after-storm", 3)])[0].finish_reason == "length"
