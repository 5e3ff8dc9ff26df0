"""Commitments and clustering: unit tests and hypothesis properties."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus import (
    Candidate,
    RecheckVerdict,
    binary_embedding,
    choose_answer,
    find_consensus,
    hamming,
    inference_id_for,
    make_commit,
    needed_members,
    opens,
    verify_reveal,
)
from consensus.verification import RejectReason

PK = bytes(range(32))
PK2 = bytes(range(1, 33))
RID = "ab" * 32


def test_binary_embedding_is_packbits_of_sign() -> None:
    e = np.array([0.5, -1.0, 0.0, 2.0, -0.1, 0.3, 0.2, -0.2, 1.0])
    assert binary_embedding(e) == np.packbits(e > 0).tobytes() == bytes([0b10010110, 0b10000000])


@pytest.mark.parametrize("bad", [np.zeros((2, 2)), np.array([]), np.array([np.nan, 1.0])])
def test_binary_embedding_rejects_bad_input(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        binary_embedding(bad)


def test_commit_opens_only_for_the_same_node_and_inference() -> None:
    b = binary_embedding(np.arange(-5, 379, dtype=float))
    iid = inference_id_for(RID, PK)
    c = make_commit(b, PK, iid)
    assert len(c) == 32 and len(iid) == 32
    assert opens(c, b, PK, iid)
    assert not opens(c, b, PK2, iid)
    assert not opens(c, b, PK, inference_id_for(RID, PK2))
    assert not opens(c, b[:-1] + bytes([b[-1] ^ 1]), PK, iid)
    assert not opens(c, b"", PK, iid)  # malformed: False, not an exception
    assert inference_id_for(RID, PK) != inference_id_for(RID, PK2)


def test_hamming() -> None:
    assert hamming(b"\x00\xff", b"\x01\xff") == 1
    assert hamming(b"\x0f", b"\xf0") == 8
    with pytest.raises(ValueError):
        hamming(b"\x00", b"\x00\x00")


def test_verify_reveal_reasons() -> None:
    rng = np.random.default_rng(0)
    e = rng.normal(size=384)
    b = binary_embedding(e)
    iid = inference_id_for(RID, PK)
    c = make_commit(b, PK, iid)
    kw = dict(request_id=RID, node_pubkey=PK, inference_id=iid, commit=c)
    assert verify_reveal(**kw, revealed_b=b, own_embedding=e) is None
    # a few flipped near-zero coordinates (device noise) are tolerated
    noisy = e.copy()
    idx = np.argsort(np.abs(e))[:3]
    noisy[idx] = -noisy[idx]
    assert verify_reveal(**kw, revealed_b=b, own_embedding=noisy) is None
    other = rng.normal(size=384)
    r = verify_reveal(**kw, revealed_b=b, own_embedding=other)
    assert r is not None and r.reason == RejectReason.embedding_mismatch and r.hamming > 100
    r = verify_reveal(**kw, revealed_b=binary_embedding(other), own_embedding=other)
    assert r is not None and r.reason == RejectReason.commit_mismatch
    r = verify_reveal(**{**kw, "inference_id": "0" * 32}, revealed_b=b, own_embedding=e)
    assert r is not None and r.reason == RejectReason.wrong_inference_id


def test_needed_members_float_noise() -> None:
    assert needed_members(5, 0.8) == 4
    assert needed_members(5, 0.6) == 3
    assert needed_members(3, 0.7) == 3
    assert needed_members(10, 0.01) == 1


def test_find_consensus_basic_and_reasons() -> None:
    base = np.ones(8)
    far = -np.ones(8)
    emb = {"a": base, "b": base * 2, "c": base + 0.01, "d": far}
    out = find_consensus(emb, quorum=4, sec_distance=0.1, sec_percentage=0.75)
    assert out.success and out.members == ("a", "b", "c") and out.reason is None
    out = find_consensus(emb, quorum=5, sec_distance=0.1, sec_percentage=0.6)
    assert not out.success and out.reason == "not_enough_valid_reveals"
    out = find_consensus(emb, quorum=4, sec_distance=0.1, sec_percentage=1.0)
    assert not out.success and out.reason == "no_cluster_of_needed_size"
    with pytest.raises(ValueError):
        find_consensus(emb, quorum=0, sec_distance=0.1, sec_percentage=0.5)
    with pytest.raises(ValueError):
        find_consensus({"a": np.ones(3), "b": np.ones(4)}, quorum=1, sec_distance=0.1, sec_percentage=1)


def test_tie_break_is_deterministic() -> None:
    # two equally large, equally tight clusters: the result must not depend on order
    e = np.eye(4)
    emb = {"x1": e[0], "x2": e[0], "y1": e[1], "y2": e[1]}
    outs = {
        find_consensus(
            dict(reversed(list(emb.items()))), quorum=4, sec_distance=0.1, sec_percentage=0.5
        ).members,
        find_consensus(emb, quorum=4, sec_distance=0.1, sec_percentage=0.5).members,
    }
    assert outs == {("x1", "x2")}


# ------------------------------------------------------------------- properties

vec = st.lists(st.floats(-1, 1, allow_nan=False), min_size=6, max_size=6).map(np.array)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text("abcdef", min_size=1, max_size=4), vec, min_size=1, max_size=12), st.randoms())
def test_order_independence(emb: dict[str, np.ndarray], rnd) -> None:
    items = list(emb.items())
    rnd.shuffle(items)
    kw = dict(quorum=max(1, len(emb) - 1), sec_distance=0.3, sec_percentage=0.6)
    assert find_consensus(dict(items), **kw) == find_consensus(emb, **kw)


@settings(max_examples=60, deadline=None)
@given(
    quorum=st.integers(3, 9),
    pct=st.sampled_from([0.5, 0.6, 0.67, 0.8]),
    seed=st.integers(0, 2**32 - 1),
)
def test_honest_cluster_of_needed_size_wins(quorum: int, pct: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    need = math.ceil(round(pct * quorum, 9))
    n_adv = quorum - need
    centre = rng.normal(size=32)
    emb = {f"h{k}": centre + rng.normal(scale=0.02, size=32) for k in range(need)}
    # adversaries may collude (identical vectors) but number fewer than honest nodes
    adv = rng.normal(size=32)
    for k in range(n_adv):
        emb[f"a{k}"] = adv if k % 2 else rng.normal(size=32)
    if n_adv >= need:
        return  # not an honest majority: no guarantee
    out = find_consensus(emb, quorum=quorum, sec_distance=0.05, sec_percentage=pct)
    assert out.success
    assert set(out.members) == {f"h{k}" for k in range(need)}
    blind = RecheckVerdict.unavailable()
    members = [Candidate(m, m, f"answer {m}", blind, emb[m]) for m in out.members]
    assert choose_answer(members).inference_id.startswith("h")


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=48, max_size=48), st.binary(min_size=48, max_size=48))
def test_reveal_that_does_not_open_is_rejected(b1: bytes, b2: bytes) -> None:
    iid = inference_id_for(RID, PK)
    c = make_commit(b1, PK, iid)
    assert opens(c, b2, PK, iid) == (b1 == b2)


def test_vectorized_thousand_reveals_runs() -> None:
    rng = np.random.default_rng(1)
    emb = {f"{k:04d}": rng.normal(size=384) for k in range(1000)}
    t = time.perf_counter()
    out = find_consensus(emb, quorum=1000, sec_distance=0.5, sec_percentage=0.5)
    assert not out.success and time.perf_counter() - t >= 0  # timing lives in scripts/
