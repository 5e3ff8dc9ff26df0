"""Consensus certificates: everything needed to re-check a result offline.

A certificate bundles the signed request frame, the signed commit frames, the signed
reveal frames and the claimed result. Anyone can re-verify it without trusting the
node that made it: every signature, every commit opening, every reveal's sign bits
against one's own embedding of the output, and the clustering itself.

Signatures and frame decoding are injected (``open_frame``, ``request_id_of``), so
this package stays free of ``node``: the daemon passes functions built on
``node.wire`` (with the clock-skew check off: certificates are checked long after the
fact). Embeddings are injected too (``embed_fn``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from consensus.clustering import ConsensusOutcome, find_consensus, joint_hash, pick_representative
from consensus.commitments import binary_embedding, hamming
from consensus.verification import DEFAULT_HAMMING_TOLERANCE, check_opening

__all__ = [
    "Certificate",
    "CertificateError",
    "CertificateParams",
    "CertificateReport",
    "CertificateResult",
    "verify_certificate",
]

CERT_VERSION = 1
OpenFrame = Callable[[bytes], tuple[str, bytes, Mapping[str, Any]]]
EmbedFn = Callable[[list[str]], np.ndarray]


class CertificateError(ValueError):
    """The certificate file is malformed (not a failed check: that is a report)."""


@dataclass(frozen=True, slots=True)
class CertificateResult:
    members: tuple[str, ...]
    representative: str
    output: str
    joint_hash: str


@dataclass(frozen=True, slots=True)
class Certificate:
    request_frame: bytes
    commit_frames: tuple[bytes, ...]
    reveal_frames: tuple[bytes, ...]
    result: CertificateResult

    def to_json(self) -> str:
        """JSON with frames as base64; stable key order."""
        return json.dumps(
            {
                "version": CERT_VERSION,
                "request_frame": _b64(self.request_frame),
                "commit_frames": [_b64(f) for f in self.commit_frames],
                "reveal_frames": [_b64(f) for f in self.reveal_frames],
                "result": {
                    "members": list(self.result.members),
                    "representative": self.result.representative,
                    "output": self.result.output,
                    "joint_hash": self.result.joint_hash,
                },
            },
            sort_keys=True,
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Certificate:
        try:
            d = json.loads(text)
            if d.get("version") != CERT_VERSION:
                raise CertificateError(f"unsupported certificate version {d.get('version')!r}")
            r = d["result"]
            return cls(
                request_frame=_unb64(d["request_frame"]),
                commit_frames=tuple(_unb64(f) for f in d["commit_frames"]),
                reveal_frames=tuple(_unb64(f) for f in d["reveal_frames"]),
                result=CertificateResult(
                    members=tuple(str(m) for m in r["members"]),
                    representative=str(r["representative"]),
                    output=str(r["output"]),
                    joint_hash=str(r["joint_hash"]),
                ),
            )
        except CertificateError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CertificateError(f"malformed certificate: {exc!r}") from exc


@dataclass(frozen=True, slots=True)
class CertificateParams:
    hamming_tolerance: int = DEFAULT_HAMMING_TOLERANCE


@dataclass(frozen=True, slots=True)
class CertificateReport:
    ok: bool
    problems: tuple[str, ...]
    outcome: ConsensusOutcome | None = None
    rejected: Mapping[str, str] = field(default_factory=dict)


def _b64(x: bytes) -> str:
    return base64.b64encode(x).decode("ascii")


def _unb64(x: str) -> bytes:
    return base64.b64decode(x.encode("ascii"), validate=True)


def _as_bytes(x: Any) -> bytes:
    if isinstance(x, bytes | bytearray):
        return bytes(x)
    if isinstance(x, str):
        return bytes.fromhex(x)
    raise TypeError(f"expected bytes, got {type(x).__name__}")


def _open_all(
    frames: Sequence[bytes], want: str, open_frame: OpenFrame, problems: list[str]
) -> list[tuple[bytes, Mapping[str, Any]]]:
    out = []
    for k, frame in enumerate(frames):
        try:
            ptype, sender, body = open_frame(frame)
        except Exception as exc:  # noqa: BLE001 - any decode failure is a finding
            problems.append(f"{want} frame {k}: does not open ({exc})")
            continue
        if str(ptype) != want:
            problems.append(f"{want} frame {k}: is a {ptype} packet")
            continue
        out.append((bytes(sender), body))
    return out


def verify_certificate(
    cert: Certificate,
    *,
    open_frame: OpenFrame,
    embed_fn: EmbedFn,
    request_id_of: Callable[[bytes], str],
    params: CertificateParams | None = None,
) -> CertificateReport:
    """Re-check a certificate end to end; ``ok`` only when nothing at all is wrong.

    ``open_frame(frame) -> (packet_type, sender_pubkey, body)`` must verify the
    signature and raise on failure; ``request_id_of(request_frame)`` gives the request
    id (hex sha256 of the signed payload); ``embed_fn(texts)`` returns one row per text.
    """
    params = params or CertificateParams()
    problems: list[str] = []
    req = _open_all([cert.request_frame], "inference_request", open_frame, problems)
    if not req:
        return CertificateReport(False, tuple(problems))
    try:
        request_id = request_id_of(cert.request_frame)
        frame = req[0][1]["security_frame"]
        quorum = int(frame["quorum"])
        sec_distance = float(frame["sec_distance"])
        sec_percentage = float(frame["sec_percentage"])
    except Exception as exc:  # noqa: BLE001
        return CertificateReport(False, (f"request: unreadable security frame ({exc})",))

    commits: dict[bytes, tuple[str, bytes]] = {}
    for sender, body in _open_all(cert.commit_frames, "inference_commit", open_frame, problems):
        tag = sender.hex()[:16]
        if body.get("request_id") != request_id:
            problems.append(f"commit from {tag}: for another request")
        elif sender in commits:
            problems.append(f"commit from {tag}: second commit from the same node")
        else:
            try:
                commits[sender] = (str(body["inference_id"]), _as_bytes(body["commit"]))
            except (KeyError, TypeError, ValueError) as exc:
                problems.append(f"commit from {tag}: malformed ({exc})")

    reveals: list[tuple[bytes, str, str, bytes]] = []
    rejected: dict[str, str] = {}  # invalid reveals are part of the record, not errors
    seen: set[bytes] = set()
    for sender, body in _open_all(cert.reveal_frames, "inference_reveal", open_frame, problems):
        tag = sender.hex()[:16]
        if body.get("request_id") != request_id:
            problems.append(f"reveal from {tag}: for another request")
            continue
        if sender in seen:
            problems.append(f"reveal from {tag}: second reveal from the same node")
            continue
        seen.add(sender)
        if sender not in commits:
            problems.append(f"reveal from {tag}: no commit from this node")
            continue
        try:
            iid, output, b = str(body["inference_id"]), str(body["output"]), _as_bytes(body["b"])
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"reveal from {tag}: malformed ({exc})")
            continue
        rej = check_opening(
            request_id=request_id,
            node_pubkey=sender,
            inference_id=iid,
            commit=commits[sender][1],
            revealed_b=b,
        )
        if rej is not None:
            rejected[iid] = f"{rej.reason} ({rej.detail})"
            continue
        reveals.append((sender, iid, output, b))

    accepted: dict[str, np.ndarray] = {}
    if reveals:
        embs = np.asarray(embed_fn([r[2] for r in reveals]))
        if embs.ndim != 2 or embs.shape[0] != len(reveals):
            raise ValueError(f"embed_fn returned shape {embs.shape} for {len(reveals)} texts")
        for (_sender, iid, _output, b), e in zip(reveals, embs, strict=True):
            own_b = binary_embedding(e)
            d = hamming(own_b, b) if len(own_b) == len(b) else len(b) * 8
            if d > params.hamming_tolerance:
                rejected[iid] = f"embedding_mismatch ({d} bits)"
            else:
                accepted[iid] = e
    outcome = find_consensus(
        accepted, quorum=quorum, sec_distance=sec_distance, sec_percentage=sec_percentage
    )
    res = cert.result
    if not outcome.success:
        problems.append(f"clustering fails: {outcome.reason}")
    elif tuple(sorted(res.members)) != outcome.members:
        problems.append(f"members differ: claimed {sorted(res.members)}, computed {list(outcome.members)}")
    else:
        by_iid = {iid: (s, out) for s, iid, out, _ in reveals}
        member_commits = {iid: commits[by_iid[iid][0]][1] for iid in outcome.members}
        lengths = {iid: len(by_iid[iid][1].split()) for iid in outcome.members}
        rep = pick_representative(request_id, member_commits, lengths)
        if rep != res.representative:
            problems.append(f"representative differs: claimed {res.representative}, computed {rep}")
        if by_iid[rep][1] != res.output:
            problems.append("output is not the representative's revealed output")
        if joint_hash(request_id, member_commits) != res.joint_hash:
            problems.append("joint hash differs")
    return CertificateReport(not problems, tuple(problems), outcome, rejected)
