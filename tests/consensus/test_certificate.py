"""Certificates: build from real signed frames (ed25519 via pynacl), verify, tamper."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from nacl.signing import SigningKey

from consensus import (
    Certificate,
    CertificateError,
    CertificateResult,
    Reputation,
    binary_embedding,
    find_consensus,
    inference_id_for,
    joint_hash,
    make_commit,
    pick_representative,
    verify_certificate,
)

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


def build(corpus, embed, n_honest=4, adv_texts=("adv",)) -> tuple[Certificate, dict]:
    it = corpus["items"][0]
    client = SigningKey(b"\x01" * 32)
    frame = {"quorum": 5, "max_time_ms": 60_000, "sec_distance": 0.5, "sec_percentage": 0.6}
    req = sign(client, "inference_request", {"prompt": it["prompt"], "security_frame": frame})
    rid = request_id_of(req)
    texts = (
        [it["greedy"]] * 2
        + it["sampled_t07"][: n_honest - 2]
        + [it["adversarial"]["random_text"]] * len(adv_texts)
    )
    commits, reveals, emb, cmap, outs = [], [], {}, {}, {}
    for k, text in enumerate(texts):
        key = SigningKey(bytes([10 + k]) * 32)
        pk = key.verify_key.encode()
        iid = inference_id_for(rid, pk)
        e = embed(text)
        b = binary_embedding(e)
        c = make_commit(b, pk, iid)
        commits.append(
            sign(key, "inference_commit", {"request_id": rid, "inference_id": iid, "commit": c.hex()})
        )
        reveals.append(
            sign(
                key,
                "inference_reveal",
                {"request_id": rid, "inference_id": iid, "output": text, "b": b.hex()},
            )
        )
        emb[iid], cmap[iid], outs[iid] = e, c, text
    out = find_consensus(emb, quorum=5, sec_distance=0.5, sec_percentage=0.6)
    assert out.success
    mc = {i: cmap[i] for i in out.members}
    rep = pick_representative(rid, mc, {i: len(outs[i].split()) for i in out.members})
    cert = Certificate(
        req,
        tuple(commits),
        tuple(reveals),
        CertificateResult(out.members, rep, outs[rep], joint_hash(rid, mc)),
    )
    return cert, {"rid": rid}


def embed_fn_of(embed):
    return lambda texts: np.stack([embed(t) for t in texts])


def test_valid_certificate_roundtrip_and_verify(corpus, corpus_embed) -> None:
    cert, _ = build(corpus, corpus_embed)
    again = Certificate.from_json(cert.to_json())
    assert again == cert
    report = verify_certificate(
        again, open_frame=open_frame, embed_fn=embed_fn_of(corpus_embed), request_id_of=request_id_of
    )
    assert report.ok, report.problems
    assert report.outcome is not None and len(report.outcome.members) == 4


def test_tampering_is_detected(corpus, corpus_embed) -> None:
    cert, _ = build(corpus, corpus_embed)
    kw = dict(open_frame=open_frame, embed_fn=embed_fn_of(corpus_embed), request_id_of=request_id_of)
    # a flipped byte in a signed reveal breaks its signature
    bad = bytearray(cert.reveal_frames[0])
    bad[-5] ^= 1
    forged = Certificate(
        cert.request_frame, cert.commit_frames, (bytes(bad), *cert.reveal_frames[1:]), cert.result
    )
    r = verify_certificate(forged, **kw)
    assert not r.ok and any("does not open" in p for p in r.problems)
    # claiming another output
    res = cert.result
    lie = Certificate(
        cert.request_frame,
        cert.commit_frames,
        cert.reveal_frames,
        CertificateResult(res.members, res.representative, "something else", res.joint_hash),
    )
    assert not verify_certificate(lie, **kw).ok
    # dropping reveals below the quorum
    short = Certificate(cert.request_frame, cert.commit_frames, cert.reveal_frames[:3], cert.result)
    r = verify_certificate(short, **kw)
    assert not r.ok and any("not_enough_valid_reveals" in p for p in r.problems)
    with pytest.raises(CertificateError):
        Certificate.from_json('{"version": 1}')
    with pytest.raises(CertificateError):
        Certificate.from_json("not json")


def test_reputation_explainable() -> None:
    rep = Reputation()
    rep.record({"a": "accepted", "b": "rejected:commit_mismatch", "c": "missing", "d": "pending"})
    rep.record({"a": "accepted"})
    assert rep.get("a").accepted == 2 and rep.get("b").reasons == {"commit_mismatch": 1}
    assert rep.score("a") > rep.score("c") > rep.score("b")
    assert "rejected" in rep.get("b").explain()
    assert Reputation.from_dict(json.loads(json.dumps(rep.to_dict()))).to_dict() == rep.to_dict()
    assert "d" not in rep.peers
    with pytest.raises(ValueError):
        rep.record({"x": "weird"})
