"""An OpenAI chat call as a network request, and the network's answer as an OpenAI reply.

`/verified/v1/chat/completions` (see `node/api/verified_routes.py`) uses these pieces:

- `VerifiedChatRequest`: the OpenAI body plus the optional `rakis` object that overrides
  the security frame of `[verified]`; `RakisOptions` validates it the way `rakis submit`
  validates its options, and a bad value is a 400 naming `rakis.<field>`.
- `build_body`: the `wire.InferenceRequest` (system prompt and history go into `messages`,
  the last user turn is the `prompt`, `stop` passes through), checked by `build_request`.
- `progress_of` / `completion_of` / `failure_of`: read the request view the facade serves
  (the same one `GET /v1/requests/{id}` returns) into progress counts, a
  `chat.completion` with its `rakis` object, or the OpenAI error a failure maps to
  (502 with the consensus reason, 504 expired).

Token counts: nodes agree on text; `usage` estimates the prompt (about four characters a
token, OpenAI's rule of thumb) and the answer too unless the view shows the winning
reveal's `output_tokens`; it is marked `"estimated": true`. `finish_reason` is `length`
when the answer used the whole `max_tokens` budget, else `stop`.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from node import wire
from node.api.errors import ApiError
from node.api.openai_routes import ChatCompletionRequest
from node.client import ClientError, build_request

__all__ = [
    "RakisOptions",
    "VerifiedChatRequest",
    "build_body",
    "completion_of",
    "failure_of",
    "network_model_hashes",
    "network_models",
    "progress_of",
]


class RakisOptions(BaseModel):
    """Per-call overrides of the `[verified]` security frame (all optional)."""

    model_config = ConfigDict(extra="forbid")

    quorum: int | None = Field(None, ge=1, le=256, description="nodes that must agree")
    sec_distance: float | None = Field(None, ge=0.0, le=2.0, description="cluster cosine distance")
    sec_percentage: float | None = Field(None, gt=0.0, le=1.0, description="share of the quorum")
    max_time_s: float | None = Field(None, gt=0.0, le=3600.0, description="request deadline")
    commit_window_s: float | None = Field(None, gt=0.0, le=60.0, description="commit window")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="sampling seed (default: from the id)")
    accepted_models: list[str] | None = Field(
        None, min_length=1, max_length=16, description="models any node may answer with"
    )
    embedding_model: str | None = Field(None, min_length=1, max_length=256)


class VerifiedChatRequest(ChatCompletionRequest):
    """The OpenAI chat body with the extra `rakis` field (kept loose here: its problems
    are 400s naming `rakis.<field>`, checked in `rakis_options`)."""

    rakis: dict[str, Any] | None = Field(
        None,
        description="optional overrides: quorum, sec_distance, sec_percentage, max_time_s, "
        "commit_window_s, seed, accepted_models, embedding_model",
    )


def rakis_options(raw: dict[str, Any] | None) -> RakisOptions:
    try:
        return RakisOptions.model_validate(raw or {})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = "unknown option" if first["type"] == "extra_forbidden" else first["msg"]
        raise ApiError(400, "invalid_rakis_option", f"rakis.{loc}: {msg}", param=f"rakis.{loc}") from None


def _conversation(body: ChatCompletionRequest) -> tuple[list[dict[str, str]], str]:
    """(earlier turns, last user message). The wire carries system/user/assistant text."""
    turns: list[dict[str, str]] = []
    for i, m in enumerate(body.messages):
        if m.role == "tool":
            raise ApiError(
                400,
                "unsupported",
                "tool messages are not supported on the verified path",
                param=f"messages.{i}",
            )
        role = "system" if m.role == "developer" else m.role
        turns.append({"role": role, "content": m.text()})
    last = turns[-1]
    if last["role"] != "user" or not last["content"]:
        raise ApiError(
            400,
            "invalid_messages",
            "the last message must be a non-empty user message (the prompt the network answers)",
            param="messages",
        )
    return turns[:-1], last["content"]


def build_body(body: VerifiedChatRequest, settings: Any) -> wire.InferenceRequest:
    """The network request for `body`, security frame from `settings.verified` and `body.rakis`."""
    opts = rakis_options(body.rakis)
    defaults = settings.verified
    if body.n not in (None, 1):
        raise ApiError(400, "unsupported", "n > 1 is not supported; send separate requests", param="n")
    for name, value, neutral in (("top_p", body.top_p, 1.0), ("top_k", body.top_k, 0)):
        if value is not None and value != neutral:
            raise ApiError(
                400, "unsupported", f"{name} is not carried on the network; leave it unset", param=name
            )
    history, prompt = _conversation(body)
    limits = getattr(settings, "wire", None) or wire.DEFAULT_LIMITS
    max_tokens = body.max_completion_tokens or body.max_tokens or min(defaults.max_tokens, limits.max_tokens)
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    try:
        return build_request(
            prompt,
            models=opts.accepted_models or [body.model],
            quorum=opts.quorum or defaults.quorum,
            max_time_s=opts.max_time_s or defaults.max_time_s,
            sec_distance=defaults.sec_distance if opts.sec_distance is None else opts.sec_distance,
            sec_percentage=opts.sec_percentage or defaults.sec_percentage,
            temperature=defaults.temperature if body.temperature is None else body.temperature,
            max_tokens=max_tokens,
            embedding_model=opts.embedding_model or defaults.embedding_model,
            seed=opts.seed if opts.seed is not None else body.seed,
            commit_window_s=opts.commit_window_s or defaults.commit_window_s,
            limits=limits,
            messages=history,
            stop=stop,
        )
    except ClientError as exc:
        message = str(exc)
        param = None
        # build_request names fields by their wire path; report them as the caller wrote them.
        for wire_name, api_name in (
            ("security_frame.commit_window_ms", "rakis.commit_window_s"),
            ("security_frame.max_time_ms", "rakis.max_time_s"),
            ("security_frame.quorum", "rakis.quorum"),
            ("security_frame", "rakis"),
            ("accepted_models", "rakis.accepted_models"),
            ("max_tokens", "max_tokens"),
            ("messages", "messages"),
            ("prompt", "messages"),
            ("stop", "stop"),
            ("sec_distance", "rakis.sec_distance"),
        ):
            if wire_name in message:
                param = api_name
                break
        raise ApiError(400, "invalid_request", message, param=param) from None


# ---- the network ----------------------------------------------------------------------------


def _alias(name: str) -> str:
    return name.split("@", 1)[0]


def network_models(local: list[str], peers: list[dict[str, Any]], self_serves: bool) -> dict[str, int]:
    """Model alias -> how many known nodes (this one and its peers) serve it."""
    counts: dict[str, int] = {}
    if self_serves:
        for m in local:
            counts[m] = counts.get(m, 0) + 1
    for p in peers:
        for m in p.get("models") or []:
            counts[m] = counts.get(m, 0) + 1
    return counts


def network_model_hashes(
    local: dict[str, str], peers: list[dict[str, Any]], self_serves: bool
) -> dict[str, dict[str, int]]:
    """Model alias -> {weights hash: nodes}, from this node's hashes and each peer's
    advertised ``model_hashes`` (peer_info) where the peer table carries them."""
    out: dict[str, dict[str, int]] = {}
    sources = ([local] if self_serves else []) + [p.get("model_hashes") or {} for p in peers]
    for hashes in sources:
        for model, digest in hashes.items():
            per = out.setdefault(model, {})
            per[digest] = per.get(digest, 0) + 1
    return out


# ---- reading the request view ------------------------------------------------------------


def progress_of(view: dict[str, Any]) -> dict[str, Any]:
    """Stage and counts against the quorum: committed, revealed, verified (re-check passed)."""
    reveals = view.get("reveals") or []
    frame = view.get("security_frame") or {}
    return {
        "state": view.get("state"),
        "stage": view.get("stage"),
        "quorum": frame.get("quorum"),
        "committed": len(view.get("commits") or []),
        "revealed": len(reveals),
        "verified": sum(1 for r in reveals if (r.get("recheck") or {}).get("status") == "passed"),
    }


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / 4) if text else 0


def winning_reveal(view: dict[str, Any]) -> dict[str, Any] | None:
    """The reveal whose output is the answer: the representative, else the first member."""
    members = {m.get("inference_id") for m in view.get("members") or []}
    representative = view.get("representative")
    reveals = view.get("reveals") or []
    for r in reveals:
        if r.get("inference_id") == representative:
            return r
    for r in reveals:
        if r.get("inference_id") in members:
            return r
    return None


def winning_model(view: dict[str, Any]) -> str | None:
    r = winning_reveal(view)
    return str(r["model"]) if r and r.get("model") else None


def answer_token_count(view: dict[str, Any]) -> int | None:
    """Exact completion tokens when the view shows the winning reveal's token ids."""
    r = winning_reveal(view)
    tokens = r.get("output_tokens") if r else None
    if isinstance(tokens, list):
        return len(tokens)
    return tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None


def rakis_object(view: dict[str, Any], certificate_url: str) -> dict[str, Any]:
    """The extra `rakis` object of every verified reply."""
    return {
        "request_id": view.get("request_id"),
        "state": view.get("state"),
        "reason": view.get("reason"),
        "members": [
            {"node_id": m.get("node_id"), "inference_id": m.get("inference_id")}
            for m in view.get("members") or []
        ],
        "certificate_url": certificate_url,
        "recheck": view.get("recheck"),
        "reveals": [
            {
                "node_id": r.get("node_id"),
                "inference_id": r.get("inference_id"),
                "model": r.get("model"),
                "recheck": r.get("recheck"),
            }
            for r in view.get("reveals") or []
        ],
    }


def completion_of(
    view: dict[str, Any], body: wire.InferenceRequest, fallback_model: str, created: int, certificate_url: str
) -> dict[str, Any]:
    """A succeeded request view as an OpenAI `chat.completion` (with `rakis`)."""
    answer = view.get("answer") or ""
    prompt_text = "".join(m["content"] for m in body.chat_messages())
    exact = answer_token_count(view)
    completion_tokens = estimate_tokens(answer) if exact is None else exact
    prompt_tokens = estimate_tokens(prompt_text)
    return {
        "id": view["request_id"],
        "object": "chat.completion",
        "created": created,
        "model": winning_model(view) or fallback_model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer, "refusal": None},
                "logprobs": None,
                "finish_reason": "length" if completion_tokens >= body.max_tokens else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "estimated": True,  # the prompt's count always; the answer's unless the view had its ids
        },
        "rakis": rakis_object(view, certificate_url),
    }


def failure_of(view: dict[str, Any]) -> ApiError:
    """The OpenAI error a failed or expired request maps to."""
    rid = view.get("request_id")
    reason = view.get("reason") or view.get("state") or "failed"
    if view.get("state") == "expired":
        return ApiError(
            504,
            "expired",
            f"request {rid} expired before the network agreed on an answer (raise rakis.max_time_s?)",
            request_id=rid,
            headers={"X-Rakis-Request-Id": str(rid)},
        )
    counts = progress_of(view)
    return ApiError(
        502,
        str(reason),
        f"the network did not agree on an answer to request {rid}: {reason} "
        f"({counts['committed']} committed, {counts['revealed']} revealed, "
        f"{counts['verified']} verified, quorum {counts['quorum']})",
        request_id=rid,
        headers={"X-Rakis-Request-Id": str(rid)},
    )
