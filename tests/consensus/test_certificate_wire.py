"""Certificates over the real wire format (node.wire): the adapter the daemon uses.

``consensus`` must not import ``node``; tests may, and this one checks that the body
field names and types ``verify_certificate`` reads match what ``node.wire`` produces.
"""

from __future__ import annotations

import numpy as np
from nacl.signing import SigningKey

from consensus import (
    Candidate,
    Certificate,
    CertificateResult,
    RecheckVerdict,
    binary_embedding,
    choose_answer,
    find_consensus,
    inference_id_for,
    joint_hash,
    make_commit,
    recheck_summary,
    verify_certificate,
)
from node import wire

MODEL = "smollm2-135m-instruct"
HASH = "sha256:" + "c" * 64


def open_frame(frame: bytes) -> tuple[str, bytes, dict]:
    p = wire.decode(frame, check_time=False)
    return str(p.type), p.sender, p.body.model_dump()


def request_id_of(frame: bytes) -> str:
    return wire.decode(frame, check_time=False).packet_id


def test_certificate_from_wire_frames(corpus, corpus_embed) -> None:
    it = corpus["items"][2]
    client = SigningKey(b"\x02" * 32)
    sf = wire.SecurityFrame(
        quorum=4,
        max_time_ms=60_000,
        sec_distance=0.5,
        sec_percentage=0.6,
        embedding_model="all-minilm-l6-v2",
        commit_window_ms=5_000,
    )
    req = wire.encode(
        wire.InferenceRequest(
            prompt=it["prompt"],
            accepted_models=[f"{MODEL}@{HASH}"],
            temperature=0.7,
            max_tokens=64,
            security_frame=sf,
            seed=7,
        ),
        client,
    )
    rid = request_id_of(req)
    texts = it["sampled_t07"][:4] + [it["adversarial"]["off_topic"]]
    commits, reveals, emb, cmap, outs, verdicts, nodes = [], [], {}, {}, {}, {}, {}
    for k, text in enumerate(texts):
        key = SigningKey(bytes([40 + k]) * 32)
        pk = key.verify_key.encode()
        iid = inference_id_for(rid, pk)
        e = corpus_embed(text)
        b = binary_embedding(e)
        c = make_commit(b, pk, iid)
        ident = dict(request_id=rid, inference_id=iid, model=MODEL, model_hash=HASH)
        commits.append(wire.encode(wire.InferenceCommit(**ident, commit=c), key))
        reveals.append(wire.encode(wire.InferenceReveal(**ident, output=text, b=b), key))
        emb[iid], cmap[iid], outs[iid], nodes[iid] = e, c, text, pk.hex()
        verdicts[iid] = (
            RecheckVerdict("passed", None, -1.5 * len(text.split()), 1)
            if k < 4
            else RecheckVerdict("failed", "token_mismatch at 3", -200.0, 0)
        )
    kept = {i: e for i, e in emb.items() if verdicts[i].status == "passed"}
    out = find_consensus(kept, quorum=4, sec_distance=0.5, sec_percentage=0.6)
    assert out.success and len(out.members) == 4
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
    cert = Certificate.from_json(cert.to_json())
    embed_fn = lambda texts: np.stack([corpus_embed(t) for t in texts])  # noqa: E731
    report = verify_certificate(cert, open_frame=open_frame, embed_fn=embed_fn, request_id_of=request_id_of)
    assert report.ok, report.problems
    # a reveal signed by another key than its commit's is not accepted
    intruder = SigningKey(b"\x77" * 32)
    iid0 = inference_id_for(rid, SigningKey(bytes([40]) * 32).verify_key.encode())
    fake = wire.encode(
        wire.InferenceReveal(
            request_id=rid,
            inference_id=iid0,
            output="x",
            b=binary_embedding(emb[iid0]),
            model=MODEL,
            model_hash=HASH,
        ),
        intruder,
    )
    bad = Certificate(req, cert.commit_frames, (fake, *cert.reveal_frames[1:]), cert.result)
    r = verify_certificate(bad, open_frame=open_frame, embed_fn=embed_fn, request_id_of=request_id_of)
    assert not r.ok and any("no commit from this node" in p for p in r.problems)
