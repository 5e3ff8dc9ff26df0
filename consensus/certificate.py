"""Consensus certificates: everything needed to re-check a result offline.

A certificate bundles the signed request frame, the signed commit frames, the signed
reveal frames and the claimed result: the members, the returned output, the answer
rule and each revealed output's re-check verdict (status, reason, log-likelihood).
Anyone can re-verify it without trusting the node that made it: every signature, every
commit's model against the request's ``accepted_models``, every commit opening and
reveal model, every reveal's sign bits against one's own embedding, that no output the
certificate itself marks ``failed`` is a member, the clustering of the rest, and that
the returned output is the one the answer rule picks (``consensus.answer``).

What an offline check cannot see without the model: whether the verdicts are true. A
verifier that lied ``failed`` about honest outputs would make a self-consistent
certificate. ``recheck_fn`` closes that gap where the weights are at hand (``rakis
verify --recheck``): each distinct (weights, output) is re-checked and a verdict that
contradicts the certificate's (passed vs failed) is a problem, as is a member that fails.

Signatures and frame decoding are injected (``open_frame``, ``request_id_of``), so
this package stays free of ``node``: the daemon passes functions built on
``node.wire`` (with the clock-skew check off: certificates are checked long after the
fact). Embeddings and re-checks are injected too (``embed_fn``, ``recheck_fn``).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from consensus.answer import ANSWER_RULES, Candidate, choose_answer
from consensus.clustering import ConsensusOutcome, find_consensus, joint_hash
from consensus.commitments import binary_embedding, hamming
from consensus.models import AcceptedModels
from consensus.recheck import FAILED, PASSED, UNAVAILABLE, RecheckVerdict, recheck_key, recheck_summary
from consensus.verification import DEFAULT_HAMMING_TOLERANCE, check_opening

__all__ = [
    "Certificate",
    "CertificateError",
    "CertificateParams",
    "CertificateReport",
    "CertificateResult",
    "RecheckItem",
    "verify_certificate",
]

CERT_VERSION = 2
OpenFrame = Callable[[bytes], tuple[str, bytes, Mapping[str, Any]]]
EmbedFn = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True, slots=True)
class RecheckItem:
    """One distinct output for ``recheck_fn`` to re-check against ``model_hash``."""

    model: str
    model_hash: str
    output: str
    output_tokens: tuple[int, ...] | None = None  # the revealer's token ids, when given


# recheck_fn(request body, items) -> one verdict per item, in order.
RecheckFn = Callable[[Mapping[str, Any], list[RecheckItem]], list[RecheckVerdict]]


class CertificateError(ValueError):
    """The certificate file is malformed (not a failed check: that is a report)."""


@dataclass(frozen=True, slots=True)
class CertificateResult:
    """The claimed result. ``verdicts``: inference id -> verdict for every revealed
    output the verifier judged (members and outputs excluded by a failed re-check)."""

    members: tuple[str, ...]
    representative: str
    output: str
    joint_hash: str
    answer_rule: str
    recheck: str
    verdicts: Mapping[str, RecheckVerdict] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Certificate:
    request_frame: bytes
    commit_frames: tuple[bytes, ...]
    reveal_frames: tuple[bytes, ...]
    result: CertificateResult

    def to_json(self) -> str:
        """JSON with frames as base64; stable key order."""
        r = self.result
        return json.dumps(
            {
                "version": CERT_VERSION,
                "request_frame": _b64(self.request_frame),
                "commit_frames": [_b64(f) for f in self.commit_frames],
                "reveal_frames": [_b64(f) for f in self.reveal_frames],
                "result": {
                    "members": list(r.members),
                    "representative": r.representative,
                    "output": r.output,
                    "joint_hash": r.joint_hash,
                    "answer_rule": r.answer_rule,
                    "recheck": r.recheck,
                    "verdicts": {iid: v.to_dict() for iid, v in sorted(r.verdicts.items())},
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
                raise CertificateError(
                    f"unsupported certificate version {d.get('version')!r} (this build reads {CERT_VERSION})"
                )
            r = d["result"]
            if not isinstance(r["verdicts"], dict):
                raise TypeError("verdicts must be a mapping")
            return cls(
                request_frame=_unb64(d["request_frame"]),
                commit_frames=tuple(_unb64(f) for f in d["commit_frames"]),
                reveal_frames=tuple(_unb64(f) for f in d["reveal_frames"]),
                result=CertificateResult(
                    members=tuple(str(m) for m in r["members"]),
                    representative=str(r["representative"]),
                    output=str(r["output"]),
                    joint_hash=str(r["joint_hash"]),
                    answer_rule=str(r["answer_rule"]),
                    recheck=str(r["recheck"]),
                    verdicts={str(k): RecheckVerdict.from_dict(v) for k, v in r["verdicts"].items()},
                ),
            )
        except CertificateError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CertificateError(f"malformed certificate: {exc!r}") from exc


@dataclass(frozen=True, slots=True)
class CertificateParams:
    hamming_tolerance: int = DEFAULT_HAMMING_TOLERANCE
    # |claimed - recomputed| log-likelihood allowed with ``recheck_fn`` (nats): honest
    # machines differ in float arithmetic; the answer rule uses the claimed values.
    log_likelihood_tolerance: float = 0.5


@dataclass(frozen=True, slots=True)
class CertificateReport:
    ok: bool
    problems: tuple[str, ...]
    outcome: ConsensusOutcome | None = None
    rejected: Mapping[str, str] = field(default_factory=dict)
    rechecked: Mapping[str, RecheckVerdict] = field(default_factory=dict)  # iid -> ours (recheck_fn)


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


def _as_tokens(x: Any) -> tuple[int, ...] | None:
    """A reveal's optional token ids: None, or a list of non-negative ints."""
    if x is None:
        return None
    if not isinstance(x, list | tuple) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in x):
        raise TypeError("output_tokens must be a list of non-negative integers")
    return tuple(x)


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


@dataclass(frozen=True, slots=True)
class _Rv:
    sender: bytes
    inference_id: str
    output: str
    b: bytes
    model: str
    model_hash: str
    output_tokens: tuple[int, ...] | None = None

    @property
    def key(self) -> str:
        return recheck_key(self.model_hash, self.output, self.output_tokens)


def verify_certificate(
    cert: Certificate,
    *,
    open_frame: OpenFrame,
    embed_fn: EmbedFn,
    request_id_of: Callable[[bytes], str],
    params: CertificateParams | None = None,
    recheck_fn: RecheckFn | None = None,
) -> CertificateReport:
    """Re-check a certificate end to end; ``ok`` only when nothing at all is wrong.

    ``open_frame(frame) -> (packet_type, sender_pubkey, body)`` must verify the
    signature and raise on failure; ``request_id_of(request_frame)`` gives the request
    id (hex sha256 of the signed payload); ``embed_fn(texts)`` returns one row per text;
    ``recheck_fn(request_body, [RecheckItem])``, when given, re-checks each distinct
    output (see module docstring).
    """
    params = params or CertificateParams()
    problems: list[str] = []
    req = _open_all([cert.request_frame], "inference_request", open_frame, problems)
    if not req:
        return CertificateReport(False, tuple(problems))
    request_body = req[0][1]
    try:
        request_id = request_id_of(cert.request_frame)
        frame = request_body["security_frame"]
        quorum = int(frame["quorum"])
        sec_distance = float(frame["sec_distance"])
        sec_percentage = float(frame["sec_percentage"])
        accepted_models = AcceptedModels.parse(list(request_body["accepted_models"]))
    except Exception as exc:  # noqa: BLE001
        return CertificateReport(False, (f"request: unreadable security frame or accepted_models ({exc})",))

    commits: dict[bytes, tuple[str, bytes, str, str]] = {}
    for sender, body in _open_all(cert.commit_frames, "inference_commit", open_frame, problems):
        tag = sender.hex()[:16]
        if body.get("request_id") != request_id:
            problems.append(f"commit from {tag}: for another request")
        elif sender in commits:
            problems.append(f"commit from {tag}: second commit from the same node")
        else:
            try:
                model, model_hash = str(body["model"]), str(body["model_hash"])
                commits[sender] = (str(body["inference_id"]), _as_bytes(body["commit"]), model, model_hash)
            except (KeyError, TypeError, ValueError) as exc:
                problems.append(f"commit from {tag}: malformed ({exc})")
                continue
            refusal = accepted_models.refusal(model, model_hash)
            if refusal is not None:
                problems.append(f"commit from {tag}: {refusal[0]} ({refusal[1]})")

    reveals: list[_Rv] = []
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
            rv = _Rv(
                sender,
                str(body["inference_id"]),
                str(body["output"]),
                _as_bytes(body["b"]),
                str(body["model"]),
                str(body["model_hash"]),
                _as_tokens(body.get("output_tokens")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"reveal from {tag}: malformed ({exc})")
            continue
        _iid, commit, model, model_hash = commits[sender]
        if (rv.model, rv.model_hash) != (model, model_hash):
            rejected[rv.inference_id] = "model_mismatch"
            continue
        rej = check_opening(
            request_id=request_id,
            node_pubkey=sender,
            inference_id=rv.inference_id,
            commit=commit,
            revealed_b=rv.b,
        )
        if rej is not None:
            rejected[rv.inference_id] = f"{rej.reason} ({rej.detail})"
            continue
        reveals.append(rv)

    opened: dict[str, tuple[_Rv, np.ndarray]] = {}
    if reveals:
        embs = np.asarray(embed_fn([r.output for r in reveals]))
        if embs.ndim != 2 or embs.shape[0] != len(reveals):
            raise ValueError(f"embed_fn returned shape {embs.shape} for {len(reveals)} texts")
        for rv, e in zip(reveals, embs, strict=True):
            own_b = binary_embedding(e)
            d = hamming(own_b, rv.b) if len(own_b) == len(rv.b) else len(rv.b) * 8
            if d > params.hamming_tolerance:
                rejected[rv.inference_id] = f"embedding_mismatch ({d} bits)"
            else:
                opened[rv.inference_id] = (rv, e)

    res = cert.result
    verdicts = dict(res.verdicts)
    by_key: dict[str, RecheckVerdict] = {}
    for iid, (rv, _e) in sorted(opened.items()):
        v = verdicts.get(iid)
        if v is None:
            problems.append(f"no re-check verdict for revealed output {iid}")
            continue
        key = rv.key
        if key in by_key and by_key[key] != v:
            problems.append(f"identical outputs carry different verdicts ({iid})")
        by_key.setdefault(key, v)

    rechecked: dict[str, RecheckVerdict] = {}
    if recheck_fn is not None and opened:
        problems += _recheck_against(request_body, opened, verdicts, recheck_fn, params, rechecked)

    for iid in res.members:
        ours, theirs = rechecked.get(iid), verdicts.get(iid)
        if ours is not None and ours.status == FAILED and (theirs is None or theirs.status != PASSED):
            problems.append(f"member {iid} fails the re-check here ({ours.reason})")

    accepted: dict[str, np.ndarray] = {}
    for iid, (_rv, e) in opened.items():
        v = verdicts.get(iid)
        if v is not None and v.status == FAILED:
            rejected[iid] = f"failed_recheck ({v.reason})"
        else:
            accepted[iid] = e
    for iid in res.members:
        v = verdicts.get(iid)
        if v is not None and v.status == FAILED:
            problems.append(f"member {iid} failed the re-check ({v.reason})")
    summary = recheck_summary([verdicts[i] for i in opened if i in verdicts])
    if res.recheck != summary:
        problems.append(f"recheck is {res.recheck!r}, the verdicts say {summary!r}")

    outcome = find_consensus(
        accepted, quorum=quorum, sec_distance=sec_distance, sec_percentage=sec_percentage
    )
    if not outcome.success:
        problems.append(f"clustering fails: {outcome.reason}")
    elif tuple(sorted(res.members)) != outcome.members:
        problems.append(f"members differ: claimed {sorted(res.members)}, computed {list(outcome.members)}")
    elif all(iid in verdicts for iid in outcome.members):
        members = [opened[iid] for iid in outcome.members]
        choice = choose_answer(
            [
                Candidate(rv.inference_id, rv.sender.hex(), rv.output, verdicts[rv.inference_id], e)
                for rv, e in members
            ]
        )
        if res.answer_rule not in ANSWER_RULES:
            problems.append(f"unknown answer rule {res.answer_rule!r}")
        elif choice.rule != res.answer_rule:
            problems.append(
                f"answer rule differs: claimed {res.answer_rule}, the verdicts give {choice.rule}"
            )
        if choice.inference_id != res.representative:
            problems.append(
                f"answer not chosen by the rule: claimed {res.representative}, {choice.rule} gives {choice.inference_id}"
            )
        if opened[choice.inference_id][0].output != res.output:
            problems.append("output is not the chosen member's revealed output")
        member_commits = {iid: commits[opened[iid][0].sender][1] for iid in outcome.members}
        if joint_hash(request_id, member_commits) != res.joint_hash:
            problems.append("joint hash differs")
    return CertificateReport(not problems, tuple(problems), outcome, rejected, rechecked)


def _recheck_against(
    request_body: Mapping[str, Any],
    opened: Mapping[str, tuple[_Rv, np.ndarray]],
    claimed: Mapping[str, RecheckVerdict],
    recheck_fn: RecheckFn,
    params: CertificateParams,
    out: dict[str, RecheckVerdict],
) -> list[str]:
    """Re-check each distinct (weights, output) here and compare with the claims."""
    keys: dict[str, RecheckItem] = {}
    for rv, _e in opened.values():
        keys.setdefault(rv.key, RecheckItem(rv.model, rv.model_hash, rv.output, rv.output_tokens))
    ordered = sorted(keys)
    ours = list(recheck_fn(request_body, [keys[k] for k in ordered]))
    if len(ours) != len(ordered):
        raise ValueError(f"recheck_fn returned {len(ours)} verdicts for {len(ordered)} outputs")
    mine = dict(zip(ordered, ours, strict=True))
    problems = []
    for iid, (rv, _e) in sorted(opened.items()):
        v = mine[rv.key]
        out[iid] = v
        c = claimed.get(iid)
        if c is None or v.status == UNAVAILABLE or c.status == UNAVAILABLE:
            continue
        if v.status != c.status:
            problems.append(f"re-check of {iid} here: {v.status} ({v.reason}), certificate says {c.status}")
        elif (
            v.status == PASSED
            and c.log_likelihood is not None
            and v.log_likelihood is not None
            and not math.isclose(v.log_likelihood, c.log_likelihood, abs_tol=params.log_likelihood_tolerance)
        ):
            problems.append(
                f"log-likelihood of {iid} here {v.log_likelihood:.3f}, certificate says {c.log_likelihood:.3f}"
            )
    return problems
