"""Certificates: build from real signed frames (ed25519 via pynacl), verify, tamper."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
from nacl.signing import SigningKey

from consensus import (
    Candidate,
    Certificate,
    CertificateError,
    CertificateResult,
    RecheckVerdict,
    Reputation,
    binary_embedding,
    choose_answer,
    find_consensus,
    inference_id_for,
    joint_hash,
    make_commit,
    recheck_summary,
    verify_certificate,
)
from consensus.certificate import RecheckItem

MODEL = "smollm2-135m"
HASH_A = "sha256:" + "a" * 64
HASH_B = "sha256:" + "b" * 64

# A stand-in for node.wire in tests: frame = signature(64) || json payload.


def sign(key: SigningKey, ptype: str, body: dict) -> bytes:
    payload = json.dumps({"type": ptype, "from": key.verify_key.encode().hex(), "body": body}).encode()
    return key.sign(payload).signature + payload


def open_frame(frame: bytes) -> tuple[str, bytes, dict]:
    from nacl.signing import VerifyKey

    sig, payload = frame[:64], frame[64:]
    d = json.loads(payload)
    sender = bytes.fromhex(d["from"])
    VerifyKey(sender).verify(payload, sig)  # raises BadSignatureError
    return d["type"], sender, d["body"]


def request_id_of(frame: bytes) -> str:
    return hashlib.sha256(frame[64:]).hexdigest()


def honest_verdict(text: str) -> RecheckVerdict:
    return RecheckVerdict("passed", None, -float(len(text.split())), 0)


def build(corpus, embed, *, recheck: bool = True, commit_hash: str = HASH_A) -> tuple[Certificate, dict]:
    """Quorum 4 (3 needed): 2 identical greedy + 2 sampled honest outputs, 1 off-topic
    answer whose re-check fails (or everything ``unavailable`` with ``recheck=False``)."""
    it = corpus["items"][0]
    client = SigningKey(b"\x01" * 32)
    frame = {"quorum": 4, "max_time_ms": 60_000, "sec_distance": 0.5, "sec_percentage": 0.6}
    req = sign(
        client,
        "inference_request",
        {"prompt": it["prompt"], "accepted_models": [f"{MODEL}@{HASH_A}"], "security_frame": frame},
    )
    rid = request_id_of(req)
    texts = [it["greedy"]] * 2 + it["sampled_t07"][:2] + [it["adversarial"]["off_topic"]]
    commits, reveals, emb, cmap, outs, nodes, verdicts = [], [], {}, {}, {}, {}, {}
    for k, text in enumerate(texts):
        key = SigningKey(bytes([10 + k]) * 32)
        pk = key.verify_key.encode()
        iid = inference_id_for(rid, pk)
        e = embed(text)
        b = binary_embedding(e)
        c = make_commit(b, pk, iid)
        mh = commit_hash if k == 0 else HASH_A
        body = {"request_id": rid, "inference_id": iid, "model": MODEL, "model_hash": mh}
        commits.append(sign(key, "inference_commit", {**body, "commit": c.hex()}))
        reveals.append(sign(key, "inference_reveal", {**body, "output": text, "b": b.hex()}))
        emb[iid], cmap[iid], outs[iid], nodes[iid] = e, c, text, pk.hex()
        if not recheck:
            verdicts[iid] = RecheckVerdict.unavailable()
        elif k < 4:
            verdicts[iid] = honest_verdict(text)
        else:
            verdicts[iid] = RecheckVerdict("failed", "token_mismatch at 0", -300.0, 0)
    kept = {i: e for i, e in emb.items() if verdicts[i].status != "failed"}
    out = find_consensus(kept, quorum=4, sec_distance=0.5, sec_percentage=0.6)
    assert out.success
    choice = choose_answer([Candidate(i, nodes[i], outs[i], verdicts[i], emb[i]) for i in out.members])
    mc = {i: cmap[i] for i in out.members}
    cert = Certificate(
        req,
        tuple(commits),
        tuple(reveals),
        CertificateResult(
            out.members,
            choice.inference_id,
            outs[choice.inference_id],
            joint_hash(rid, mc),
            choice.rule,
            recheck_summary(list(verdicts.values())),
            verdicts,
        ),
    )
    return cert, {"rid": rid, "outs": outs, "verdicts": verdicts, "members": out.members}


def embed_fn_of(embed):
    return lambda texts: np.stack([embed(t) for t in texts])


def _kw(embed) -> dict:
    return dict(open_frame=open_frame, embed_fn=embed_fn_of(embed), request_id_of=request_id_of)


def test_valid_certificate_roundtrip_and_verify(corpus, corpus_embed) -> None:
    cert, facts = build(corpus, corpus_embed)
    again = Certificate.from_json(cert.to_json())
    assert again == cert
    report = verify_certificate(again, **_kw(corpus_embed))
    assert report.ok, report.problems
    assert report.outcome is not None and len(report.outcome.members) == 4
    assert cert.result.answer_rule == "max_log_likelihood" and cert.result.recheck == "checked"
    off_topic = [i for i, t in facts["outs"].items() if t == corpus["items"][0]["adversarial"]["off_topic"]]
    assert report.rejected[off_topic[0]].startswith("failed_recheck")


def test_fallback_certificate_without_recheck(corpus, corpus_embed) -> None:
    cert, _ = build(corpus, corpus_embed, recheck=False)
    assert cert.result.answer_rule == "medoid" and cert.result.recheck == "unavailable"
    report = verify_certificate(Certificate.from_json(cert.to_json()), **_kw(corpus_embed))
    assert report.ok, report.problems


def _with(cert: Certificate, **changes) -> Certificate:
    return dataclasses.replace(cert, result=dataclasses.replace(cert.result, **changes))


def test_failed_member_or_wrong_answer_choice_fails(corpus, corpus_embed) -> None:
    cert, facts = build(corpus, corpus_embed)
    kw = _kw(corpus_embed)
    res = cert.result
    failed = next(i for i, v in facts["verdicts"].items() if v.status == "failed")
    # a member whose own verdict is failed
    r = verify_certificate(_with(cert, members=tuple(sorted((*res.members, failed)))), **kw)
    assert not r.ok and any(f"member {failed} failed the re-check" in p for p in r.problems)
    # another member's output returned: not the max-likelihood one
    other = next(i for i in res.members if facts["outs"][i] != res.output)
    r = verify_certificate(_with(cert, representative=other, output=facts["outs"][other]), **kw)
    assert not r.ok and any("answer not chosen by the rule" in p for p in r.problems)
    # the rule misnamed
    r = verify_certificate(_with(cert, answer_rule="medoid"), **kw)
    assert not r.ok and any("answer rule differs" in p for p in r.problems)
    # verdicts edited so that another member would win: the claimed answer no longer follows
    boosted = dict(res.verdicts)
    boosted[other] = RecheckVerdict("passed", None, 0.0, 0)
    r = verify_certificate(_with(cert, verdicts=boosted), **kw)
    assert not r.ok and any("answer not chosen by the rule" in p for p in r.problems)
    # a missing verdict, and a summary that lies
    partial = {i: v for i, v in res.verdicts.items() if i != other}
    assert not verify_certificate(_with(cert, verdicts=partial), **kw).ok
    r = verify_certificate(_with(cert, recheck="unavailable"), **kw)
    assert not r.ok and any("recheck is" in p for p in r.problems)


def test_recheck_fn_catches_lying_verdicts(corpus, corpus_embed) -> None:
    cert, facts = build(corpus, corpus_embed)
    honest = set(facts["outs"][i] for i in facts["members"])
    calls = []

    def truthful(request_body, items: list[RecheckItem]) -> list[RecheckVerdict]:
        calls.append(len(items))
        assert request_body["accepted_models"] == [f"{MODEL}@{HASH_A}"]
        return [
            honest_verdict(it.output)
            if it.output in honest
            else RecheckVerdict("failed", "token_mismatch at 0")
            for it in items
        ]

    r = verify_certificate(cert, **_kw(corpus_embed), recheck_fn=truthful)
    assert r.ok, r.problems
    assert calls == [4]  # the two identical greedy outputs are re-checked once
    assert len(r.rechecked) == 5

    def inverted(request_body, items):
        return [
            RecheckVerdict("failed", "x") if it.output in honest else honest_verdict(it.output)
            for it in items
        ]

    r = verify_certificate(cert, **_kw(corpus_embed), recheck_fn=inverted)
    assert not r.ok and sum("certificate says" in p for p in r.problems) == 5
    # a fallback certificate: members that fail here are reported
    fallback, _ = build(corpus, corpus_embed, recheck=False)
    r = verify_certificate(fallback, **_kw(corpus_embed), recheck_fn=inverted)
    assert not r.ok and any("fails the re-check here" in p for p in r.problems)


def test_commit_for_a_model_the_request_did_not_accept(corpus, corpus_embed) -> None:
    cert, _ = build(corpus, corpus_embed, commit_hash=HASH_B)
    r = verify_certificate(cert, **_kw(corpus_embed))
    assert not r.ok and any("model_hash_not_accepted" in p for p in r.problems)


def test_tampering_is_detected(corpus, corpus_embed) -> None:
    cert, _ = build(corpus, corpus_embed)
    kw = _kw(corpus_embed)
    # a flipped byte in a signed reveal breaks its signature
    bad = bytearray(cert.reveal_frames[0])
    bad[-5] ^= 1
    forged = Certificate(
        cert.request_frame, cert.commit_frames, (bytes(bad), *cert.reveal_frames[1:]), cert.result
    )
    r = verify_certificate(forged, **kw)
    assert not r.ok and any("does not open" in p for p in r.problems)
    # claiming another output
    lie = _with(cert, output="something else")
    assert not verify_certificate(lie, **kw).ok
    # dropping reveals below the quorum
    short = Certificate(cert.request_frame, cert.commit_frames, cert.reveal_frames[:3], cert.result)
    r = verify_certificate(short, **kw)
    assert not r.ok and any("not_enough_valid_reveals" in p for p in r.problems)
    with pytest.raises(CertificateError):
        Certificate.from_json('{"version": 2}')
    with pytest.raises(CertificateError, match="version 1"):
        Certificate.from_json('{"version": 1}')
    with pytest.raises(CertificateError):
        Certificate.from_json("not json")
    d = json.loads(cert.to_json())
    d["result"]["verdicts"][cert.result.members[0]]["status"] = "maybe"
    with pytest.raises(CertificateError):
        Certificate.from_json(json.dumps(d))


def test_reputation_explainable() -> None:
    rep = Reputation()
    rep.record({"a": "accepted", "b": "rejected:commit_mismatch", "c": "missing", "d": "pending"})
    rep.record({"a": "accepted", "e": "rejected:failed_recheck"})
    assert rep.get("a").accepted == 2 and rep.get("b").reasons == {"commit_mismatch": 1}
    assert rep.score("a") > rep.score("c") > rep.score("b") > rep.score("e")
    assert rep.get("e").failed_rechecks == 1 and "failed_recheck" in rep.get("e").explain()
    assert "rejected" in rep.get("b").explain()
    assert Reputation.from_dict(json.loads(json.dumps(rep.to_dict()))).to_dict() == rep.to_dict()
    assert "d" not in rep.peers
    with pytest.raises(ValueError):
        rep.record({"x": "weird"})
