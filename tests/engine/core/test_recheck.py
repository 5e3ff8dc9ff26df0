"""Teacher-forced re-check (engine.recheck) on the tiny model: honest outputs pass
whatever the verifier's batch and prefill split, everything else fails with its
reason, and re-checks run ahead of queued generation on shared prompt blocks."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from engine.core import GenerationRequest, SamplingParams
from engine.recheck import RecheckTolerance
from engine.types import RecheckRequest

pytestmark = pytest.mark.timeout(240)

MSG = [{"role": "user", "content": "Tell me a story about a dragon."}]
SETTINGS = [
    SamplingParams(max_tokens=20),
    SamplingParams(temperature=0.7, seed=3, max_tokens=20),
    SamplingParams(temperature=1.0, top_p=0.9, seed=4, max_tokens=20),
    SamplingParams(temperature=1.0, top_k=20, seed=5, max_tokens=20),
    SamplingParams(temperature=1.2, top_p=0.8, top_k=50, seed=6, max_tokens=20),
]


def _msgs(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Question number {i}: what is {i} plus {i}?"}]


def _rc(rid: str, sp: SamplingParams, ids: list[int], msgs=MSG, **kw) -> RecheckRequest:
    return RecheckRequest(rid, sp, messages=msgs, output_token_ids=ids, **kw)


@pytest.fixture
def produced(make_engine):
    """Outputs of a producer batching 20 requests with 512-token prefill chunks."""
    prod = make_engine(max_batch_size=16, max_num_batched_tokens=512)
    reqs = [GenerationRequest(f"g{i}", SETTINGS[i % len(SETTINGS)], messages=_msgs(i)) for i in range(20)]
    res = prod.generate(reqs)
    prod.stop()
    return reqs, res


def test_honest_outputs_pass_with_another_batch_and_prefill_split(make_engine, produced):
    reqs, res = produced
    ver = make_engine(max_batch_size=3, max_num_batched_tokens=16)  # prompt split into 16-token chunks
    strict = RecheckTolerance(eps_cdf=0.0, eps_logit=0.0, max_suspect=0)
    out = [
        ver.submit_recheck(_rc(f"r{r.request_id}", q.sampling, r.token_ids, q.messages), strict)
        for q, r in zip(reqs, res, strict=False)
    ]
    ver.start()
    results = [s.result(timeout=120) for s in out]
    for q, r, v in zip(reqs, res, results, strict=True):
        assert v.passed, (q.request_id, v)
        assert v.reason is None and v.first_bad_position is None and v.checked
        assert v.positions == len(r.token_ids) and v.suspect_positions == 0
        assert math.isfinite(v.log_likelihood) and v.log_likelihood < 0
        assert v.request_id == f"r{r.request_id}"


def test_log_likelihood_is_the_unadjusted_model_log_prob(make_engine, tiny_hf, produced):
    reqs, res = produced
    q, r = reqs[1], res[1]  # T = 0.7: the log-likelihood still uses T = 1
    ver = make_engine()
    v = ver.recheck([_rc("ll", q.sampling, r.token_ids, q.messages)])[0]
    prompt = ver._prompt_ids(q)
    ids = torch.tensor([prompt + r.token_ids])
    with torch.inference_mode():
        logp = torch.log_softmax(tiny_hf(ids).logits[0].double(), -1)
    want = sum(float(logp[len(prompt) - 1 + t, tok]) for t, tok in enumerate(r.token_ids))
    assert v.log_likelihood == pytest.approx(want, abs=1e-3)


def test_forgeries_fail_with_their_reason(make_engine, produced):
    reqs, res = produced
    ver = make_engine()
    eos = min(ver.eos_token_ids)
    hot = [
        (q, r)
        for q, r in zip(reqs, res, strict=False)
        if q.sampling.temperature > 0 and len(r.token_ids) >= 6
    ]
    q, r = hot[0]
    sp = q.sampling
    length_stopped = next((q, r) for q, r in zip(reqs, res, strict=False) if r.finish_reason == "length")
    lq, lr = length_stopped
    cases = {
        "other_seed": (
            _rc("a", SamplingParams(**{**sp.__dict__, "seed": sp.seed + 1}), r.token_ids, q.messages),
            "token_mismatch",
        ),
        "other_prompt": (
            _rc("b", sp, r.token_ids, [{"role": "user", "content": "Something else."}]),
            "token_mismatch",
        ),
        "one_token_changed": (
            _rc("c", sp, r.token_ids[:3] + [(r.token_ids[3] + 1) % 49152] + r.token_ids[4:], q.messages),
            "token_mismatch",
        ),
        "garbage": (_rc("d", sp, [17, 17, 17, 17, 17], q.messages), "token_mismatch"),
        "truncated": (_rc("e", lq.sampling, lr.token_ids[:-3], lq.messages), "wrong_stop"),
        "over_long": (
            _rc("f", SamplingParams(**{**lq.sampling.__dict__, "max_tokens": 5}), lr.token_ids, lq.messages),
            "too_long",
        ),
        "past_eos": (
            _rc("g", lq.sampling, lr.token_ids[:4] + [eos] + lr.token_ids[4:8], lq.messages),
            "wrong_stop",
        ),
    }
    results = ver.recheck([c for c, _ in cases.values()])
    for (name, (_, reason)), v in zip(cases.items(), results, strict=True):
        assert not v.passed and v.checked, name
        assert v.reason == reason, (name, v)
        assert v.first_bad_position is not None
    # The same outputs, honestly claimed, pass.
    ok = ver.recheck(
        [_rc("h", sp, r.token_ids, q.messages), _rc("i", lq.sampling, lr.token_ids, lq.messages)]
    )
    assert all(v.passed for v in ok)


def test_greedy_near_tie_is_suspect_within_budget(make_engine, produced):
    """A greedy output whose token is not the argmax passes only while the gap is
    under eps_logit, and only up to the budget of suspect positions."""
    reqs, res = produced
    q, r = reqs[0], res[0]
    ver = make_engine()
    wide = RecheckTolerance(eps_logit=1e9, max_suspect=1)
    alt = r.token_ids[:2] + [(r.token_ids[2] + 1) % 49152]
    one = ver.submit_recheck(_rc("w1", SamplingParams(max_tokens=3), alt, q.messages), wide)
    two_alt = [(t + 1) % 49152 for t in r.token_ids[:3]]
    two = ver.submit_recheck(_rc("w2", SamplingParams(max_tokens=3), two_alt, q.messages), wide)
    ver.start()
    v1, v2 = one.result(timeout=60), two.result(timeout=60)
    assert v1.passed and v1.suspect_positions == 1
    assert not v2.passed and v2.reason == "too_many_suspect"


def test_bad_requests_raise_and_queue_nothing(make_engine):
    ver = make_engine()
    sp = SamplingParams()
    with pytest.raises(ValueError, match="output_token_ids, output_text, or both"):
        ver.submit_recheck(RecheckRequest("x", sp, messages=MSG))
    with pytest.raises(ValueError, match="output_token_ids"):
        ver.submit_recheck(_rc("x", sp, [10**9]))
    with pytest.raises(ValueError, match="seed"):
        ver.submit_recheck(_rc("x", SamplingParams(seed=-1), [1]))
    with pytest.raises(ValueError, match="exactly one of messages"):
        ver.submit_recheck(RecheckRequest("x", sp, output_token_ids=[1]))
    assert ver.stats()["waiting"] == 0 and not ver._active


def test_stop_string_outputs(make_engine):
    """A token-id output cut by a stop string passes where generation stopped, and
    fails when it runs on past the stop string."""
    eng = make_engine()
    base = eng.generate(
        [GenerationRequest("b", SamplingParams(max_tokens=20, ignore_eos=True), messages=MSG)]
    )[0]
    stop = base.text[4:7]
    sp = SamplingParams(max_tokens=20, ignore_eos=True, stop=[stop])
    cut = eng.generate([GenerationRequest("s", sp, messages=MSG)])[0]
    assert cut.finish_reason == "stop"
    good, longer = eng.recheck([_rc("g", sp, cut.token_ids), _rc("l", sp, base.token_ids)])
    assert good.passed, good
    assert not longer.passed and longer.reason == "wrong_stop"


def test_recheck_runs_before_queued_generation_and_reuses_prompt_blocks(make_engine):
    eng = make_engine(max_batch_size=1)
    done: list[str] = []
    lock = threading.Lock()

    def track(stream):
        def fn(ev):
            if not hasattr(ev, "token_id"):
                with lock:
                    done.append(stream.request_id)

        stream.add_listener(fn)
        return stream

    ref = eng.generate([GenerationRequest("ref", SamplingParams(max_tokens=12), messages=MSG)])[0]
    long = SamplingParams(max_tokens=40, ignore_eos=True)
    gens = [track(eng.submit(GenerationRequest(f"g{i}", long, messages=_msgs(i)))) for i in range(3)]
    rc = track(eng.submit_recheck(_rc("rc", SamplingParams(max_tokens=12), ref.token_ids)))
    results = [s.result(timeout=120) for s in gens]
    v = rc.result(timeout=120)
    assert v.passed
    # g0 was already running (batch of one); the re-check went next, ahead of g1 and g2.
    assert done.index("rc") < done.index("g1") < done.index("g2")
    assert all(r.finish_reason == "length" for r in results)
    assert v.cached_tokens > 0  # the prompt's blocks came from the generation's prefix cache


def test_ids_with_their_text_pass_and_a_text_that_is_not_theirs_fails(make_engine, produced):
    """The node reveals both: the ids are checked exactly, and the text must be what
    generation emitted for them, so a tiny model's random, non-round-tripping text
    still passes while the same ids under another text fail as text_mismatch."""
    reqs, res = produced
    ver = make_engine()
    both = [
        RecheckRequest(
            f"b{r.request_id}",
            q.sampling,
            messages=q.messages,
            output_token_ids=r.token_ids,
            output_text=r.text,
        )
        for q, r in zip(reqs, res, strict=True)
    ]
    q0, r0 = reqs[0], res[0]
    forged = RecheckRequest(
        "forged",
        q0.sampling,
        messages=q0.messages,
        output_token_ids=r0.token_ids,
        output_text=r0.text + " (edited)",
    )
    out = ver.recheck([*both, forged])
    assert [v.request_id for v in out[:-1] if not v.passed] == []
    assert out[-1].checked and not out[-1].passed and out[-1].reason == "text_mismatch"
