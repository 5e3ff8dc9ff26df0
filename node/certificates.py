"""Certificates offline: read one, and check it end to end without trusting any node.

``rakis verify`` and ``verify_certificate_data`` open every signed frame, hand the
certificate to ``consensus.certificate.verify_certificate`` with the real embedding model
the request named, and (``recheck``) re-run each output's model on this machine: the
same engine inputs as the daemons (``node.daemon.compute.engine_input``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node import wire
from node.client import ClientError, _quiet_model_loading

__all__ = ["local_recheck_fn", "read_certificate", "verify_certificate_data"]


def _open_frame(frame: bytes) -> tuple[str, bytes, dict[str, Any]]:
    # No clock-skew check: certificates are checked long after the packets were made.
    p = wire.decode(frame, check_time=False)
    return str(p.type), p.sender, p.body.model_dump()


def _request_id_of(frame: bytes) -> str:
    return wire.decode(frame, check_time=False).packet_id


def read_certificate(path: Path) -> dict[str, Any]:
    """The certificate dict in ``path``: a certificate file, or a saved request view
    (``GET /v1/requests/{id}`` or ``rakis result --json --full``) holding one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ClientError(f"{path} is not JSON: {exc}") from None
    if isinstance(data, dict) and "request_frame" not in data and isinstance(data.get("certificate"), dict):
        data = data["certificate"]
    if not isinstance(data, dict) or "request_frame" not in data:
        raise ClientError(f"{path} holds no certificate (no request_frame)")
    return data


def local_recheck_fn(request_id: str, body: wire.InferenceRequest) -> Callable[..., Any]:
    """A ``consensus.certificate.RecheckFn`` that re-runs each output's model locally.

    The proof-of-inference check of ``rakis verify --recheck``: the same engine inputs
    as the daemons (``node.daemon.compute.engine_input``: chat template, sampling, the
    request's seed), run on this machine's copy of the model, whose weights hash must be
    the one the output was claimed under; otherwise that output is ``unavailable``."""
    from consensus.recheck import RecheckVerdict
    from engine.core import EngineCore
    from engine.registry import ModelKind, ModelRegistry
    from engine.types import RecheckRequest
    from node.daemon.compute import engine_input, verdict_from_result

    registry = ModelRegistry()

    def recheck(_request: Any, items: list[Any]) -> list[Any]:
        verdicts = []
        for item in items:
            try:
                held = registry.weights_hash(item.model, ModelKind.LLM)
            except Exception as exc:  # noqa: BLE001 - not a model of this machine
                verdicts.append(RecheckVerdict.unavailable(f"{item.model!r} is not available here: {exc}"[:400]))
                continue
            if held != item.model_hash:
                verdicts.append(RecheckVerdict.unavailable(f"this machine holds other weights for {item.model!r}"))
                continue
            _quiet_model_loading()
            core = EngineCore(registry.resolve(item.model, ModelKind.LLM), name=item.model)
            try:
                messages, sampling = engine_input(request_id, body)
                (res,) = core.recheck(
                    [
                        RecheckRequest(
                            request_id="verify",
                            sampling=sampling,
                            messages=messages,
                            output_text=item.output,
                            output_token_ids=None if item.output_tokens is None else list(item.output_tokens),
                        )
                    ]
                )
            finally:
                core.stop()
            verdicts.append(verdict_from_result(res))
        return verdicts

    return recheck


def verify_certificate_data(
    data: dict[str, Any],
    *,
    embed_fn: Callable[[list[str]], Any] | None = None,
    hamming_tolerance: int | None = None,
    recheck: bool = False,
) -> tuple[bool, list[str], dict[str, Any]]:
    """Re-check a certificate end to end: ``(ok, problems, facts)``.

    Uses the real embedding model named in the signed request (``embed_fn`` is for
    callers that already hold one). With ``recheck`` every distinct output is also
    re-run on this machine's copy of its model (proof of inference, offline); outputs
    whose model is not here are reported ``unavailable``, not failed. A certificate of
    a request that did not succeed is reported as such: it proves no answer.
    """
    from consensus.certificate import Certificate, CertificateError, CertificateParams, verify_certificate

    facts: dict[str, Any] = {k: data.get(k) for k in ("request_id", "state", "reason", "verifier")}
    if not data.get("result"):
        why = f"{data.get('state') or 'unknown state'}" + (
            f": {data['reason']}" if data.get("reason") else ""
        )
        return (
            False,
            [f"the certificate records a request that did not succeed ({why}); it proves no answer"],
            facts,
        )
    try:
        cert = Certificate.from_json(json.dumps(data))
    except CertificateError as exc:
        return False, [str(exc)], facts
    problems: list[str] = []
    try:
        req = wire.decode(cert.request_frame, check_time=False)
    except wire.WireError as exc:
        return False, [f"request frame: does not open ({exc})"], facts
    facts.update(
        computed_request_id=req.packet_id,
        client=req.sender_id,
        prompt=req.body.prompt,
        embedding_model=req.body.security_frame.embedding_model,
        members=list(cert.result.members),
        answer=cert.result.output,
    )
    if data.get("request_id") and data["request_id"] != req.packet_id:
        problems.append(f"request_id {data['request_id']} is not the signed request's id {req.packet_id}")
    if embed_fn is None:
        from engine.embedding import load_embed_fn

        _quiet_model_loading()

        try:
            embed_fn = load_embed_fn(req.body.security_frame.embedding_model)
        except Exception as exc:  # noqa: BLE001 - unknown model, missing files: say which
            raise ClientError(
                f"cannot load embedding model {req.body.security_frame.embedding_model!r}: {exc}"
            ) from None
    params = CertificateParams() if hamming_tolerance is None else CertificateParams(hamming_tolerance)
    recheck_fn = local_recheck_fn(req.packet_id, req.body) if recheck else None
    report = verify_certificate(
        cert,
        open_frame=_open_frame,
        embed_fn=embed_fn,
        request_id_of=_request_id_of,
        params=params,
        recheck_fn=recheck_fn,
    )
    problems.extend(report.problems)
    facts["recheck"] = cert.result.recheck
    facts["answer_rule"] = cert.result.answer_rule
    facts["verdicts"] = {iid: v.to_dict() for iid, v in cert.result.verdicts.items()}
    facts["rejected_reveals"] = dict(report.rejected)
    return not problems, problems, facts
