"""OpenAI-compatible endpoints on the node's *local* engines (no network consensus).

`POST /v1/chat/completions` (streaming as `chat.completion.chunk` SSE ending with
`data: [DONE]`, and not), `POST /v1/embeddings`, `GET /v1/models`. Shapes follow the
OpenAI API closely enough for the official `openai` client; unsupported options are
refused with a 400 that names them rather than silently ignored when they would change
the result (`n > 1`, `dimensions`, token-array inputs). Unknown extra fields are ignored,
as the OpenAI SDKs send new ones all the time.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import anyio
import numpy as np
from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.embedding import Priority
from engine.llm_engine import InferenceResult, LLMRequest, NoWorkerError
from engine.registry import UnknownModelError
from engine.types import SamplingParams, TokenEvent
from node import metrics
from node.api.errors import ApiError, error_body, error_responses
from node.api.facade import NodeFacade
from node.api.schemas import chat_completion_ok
from node.api.sse import to_json
from node.logs import get_logger

log = get_logger(__name__)

DEFAULT_MAX_TOKENS = 512
MAX_EMBEDDING_INPUTS = 2048


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=1024)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    # Not just > 0: the engine samples in float32, where a top_p under ~1e-45 is 0 and fails
    # the whole batch step (every sequence in it, not only this one). 1e-6 is greedy already.
    top_p: float | None = Field(None, ge=1e-6, le=1.0)
    top_k: int | None = Field(None, ge=0, description="extension: 0 = off")
    max_tokens: int | None = Field(
        None, ge=1, description="at most the node's wire.max_tokens; more is refused with 400"
    )
    max_completion_tokens: int | None = Field(None, ge=1, description="as max_tokens (wins over it)")
    stop: str | list[str] | None = Field(
        None,
        description="up to 4 non-empty stop sequences",
        json_schema_extra={
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 4},
                {"type": "null"},
            ]
        },
    )
    # 2**53 - 1: the largest integer every JSON client (and a float) holds exactly.
    seed: int | None = Field(None, ge=0, le=2**53 - 1)
    # Only 1 is served; the schema says so, and n > 1 gets a 400 that names it.
    n: int | None = Field(
        None,
        ge=1,
        description="only 1 is supported",
        json_schema_extra={"anyOf": [{"const": 1}, {"type": "null"}]},
    )

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return v


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    input: str | list[str] = Field(
        description="a text or a list of 1 to 2048 texts (token arrays are not supported)",
        json_schema_extra={
            "anyOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "items": {"type": "string"},
                    "minItems": 1,
                    "maxItems": MAX_EMBEDDING_INPUTS,
                },
            ]
        },
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(
        None, ge=1, description="must equal the model's own dimension (no truncation); others get a 400"
    )

    @field_validator("input", mode="before")
    @classmethod
    def _no_tokens(cls, v: Any) -> Any:
        if isinstance(v, list) and v and not all(isinstance(x, str) for x in v):
            raise ValueError("input must be a string or a list of strings; token arrays are not supported")
        return v


# ---- engine adapters (names and shapes as engine/ publishes them) ------------------------


def _names(items: Any) -> list[str]:
    """available_models()/worker lists may be names or dicts; normalise to names."""
    out: list[str] = []
    for item in items or []:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            name = item.get("name") or item.get("model") or item.get("id")
            if name:
                out.append(str(name))
        else:
            name = getattr(item, "name", None) or getattr(item, "model", None)
            if name:
                out.append(str(name))
    return list(dict.fromkeys(out))


def local_llm_models(node: NodeFacade) -> list[str]:
    """The LLM names this node's own engine serves (the verified path adds the peers')."""
    llm = getattr(node, "llm", None)
    return _names(llm.available_models()) if llm is not None else []


def _embedding_models(node: NodeFacade) -> list[str]:
    emb = getattr(node, "embeddings", None)
    if emb is None:
        return []
    for attr in ("available_models", "models"):
        fn = getattr(emb, attr, None)
        if callable(fn):
            return _names(fn())
    name = getattr(emb, "model_name", None) or getattr(
        getattr(node, "settings", None), "embedding_model", None
    )
    return [name] if name else []


def _max_tokens_limit(node: NodeFacade) -> int:
    limits = getattr(getattr(node, "settings", None), "wire", None)
    return int(getattr(limits, "max_tokens", 4096))


def _engine_error(exc: Exception) -> ApiError:
    if isinstance(exc, UnknownModelError):
        return ApiError(404, "model_not_found", str(exc), param="model")
    if isinstance(exc, NoWorkerError):
        return ApiError(503, "no_worker", str(exc))
    if isinstance(exc, ValueError | KeyError | LookupError | TypeError):
        message = exc.args[0] if exc.args else str(exc)
        return ApiError(400, "invalid_request", str(message))
    log.error("engine_error", error=repr(exc))
    return ApiError(503, "engine_error", f"the local engine failed: {type(exc).__name__}: {exc}")


def _result_error(result: InferenceResult) -> ApiError | None:
    if result.finish_reason in ("stop", "length"):
        return None
    if result.finish_reason == "expired":
        return ApiError(503, "expired", "the request waited too long in the engine queue")
    if result.finish_reason == "abort":
        return ApiError(503, "aborted", "the generation was aborted")
    if (result.error or "").startswith("ValueError:"):
        # The worker refused the request itself (e.g. a prompt longer than the model's
        # context): the client's fault, not the server's.
        return ApiError(
            400, "invalid_request", f"generation refused: {result.error.removeprefix('ValueError: ')}"
        )
    return ApiError(503, "engine_error", f"generation failed: {result.error or result.finish_reason}")


def _usage(result: InferenceResult) -> dict[str, Any]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": result.cached_tokens},
    }


def _sse(data: dict[str, Any]) -> str:
    return f"data: {to_json(data)}\n\n"


# ---- router -----------------------------------------------------------------------------


def openai_router(node: NodeFacade) -> APIRouter:
    router = APIRouter(prefix="/v1")

    def require_llm(model: str) -> Any:
        llm = getattr(node, "llm", None)
        if llm is None:
            raise ApiError(503, "no_llm_engine", "this node runs no local LLM engine")
        available = local_llm_models(node)
        if model not in available:
            raise ApiError(
                404,
                "model_not_found",
                f"model {model!r} is not served by this node; available: {', '.join(available) or 'none'}",
                param="model",
            )
        return llm

    def llm_request(body: ChatCompletionRequest, request_id: str) -> LLMRequest:
        if body.n not in (None, 1):
            raise ApiError(400, "unsupported", "n > 1 is not supported; send separate requests", param="n")
        limit = _max_tokens_limit(node)
        max_tokens = body.max_completion_tokens or body.max_tokens or min(DEFAULT_MAX_TOKENS, limit)
        if max_tokens > limit:
            raise ApiError(
                400, "max_tokens_too_large", f"max_tokens {max_tokens} is over this node's limit of {limit}"
            )
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        sampling = SamplingParams(
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=body.top_k or 0,
            seed=body.seed,
            max_tokens=max_tokens,
            stop=stop,
        )
        try:
            sampling.validate()
        except ValueError as exc:
            raise ApiError(400, "invalid_sampling", str(exc)) from None
        messages = [
            {"role": m.role if m.role != "developer" else "system", "content": m.text()}
            for m in body.messages
        ]
        return LLMRequest(models=(body.model,), messages=messages, sampling=sampling, request_id=request_id)

    @router.get("/models")
    async def models() -> dict[str, Any]:
        created = int(node.started_at)
        hashes_of = getattr(node, "model_hashes", None)
        hashes = hashes_of() if callable(hashes_of) else {}  # what the node commits under
        llm = {"object": "model", "created": created, "owned_by": "rakis", "type": "llm"}
        data = [{"id": name, **llm, "model_hash": hashes.get(name)} for name in local_llm_models(node)] + [
            {"id": name, "object": "model", "created": created, "owned_by": "rakis", "type": "embedding"}
            for name in _embedding_models(node)
        ]
        return {"object": "list", "data": data}

    @router.post(
        "/chat/completions",
        response_model=None,
        responses={
            **chat_completion_ok(
                "A `chat.completion`, or with `stream: true` `chat.completion.chunk` "
                "server-sent events ending with `data: [DONE]`"
            ),
            **error_responses(
                400,
                404,
                413,
                422,
                503,
                s400="Not valid JSON, or an option this node refuses (n > 1, max_tokens over its limit, "
                "a prompt longer than the model's context)",
                s404="The model is not served by this node",
                s503="No local LLM engine or worker, or the engine failed",
            ),
        },
    )
    async def chat_completions(body: ChatCompletionRequest) -> dict[str, Any] | StreamingResponse:
        llm = require_llm(body.model)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        request = llm_request(body, completion_id)
        created = int(time.time())
        if not body.stream:
            try:
                result = await llm.run_inference_non_streaming(request)
            except Exception as exc:  # noqa: BLE001 - mapped to a 4xx/503 naming it
                raise _engine_error(exc) from None
            metrics.observe_generation(body.model, result)
            if (err := _result_error(result)) is not None:
                raise err
            return {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": body.model,
                "system_fingerprint": None,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": result.text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": result.finish_reason,
                    }
                ],
                "usage": _usage(result),
            }

        # Streaming: wait for the first token here so engine errors still get a proper
        # status code; once the headers are out they can only travel as an error chunk.
        try:
            stream = llm.run_inference(request)
        except Exception as exc:  # noqa: BLE001
            raise _engine_error(exc) from None
        try:
            first: TokenEvent | None = await stream.__anext__()
        except StopAsyncIteration:
            first = None
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            raise
        if first is None and stream.result is not None:
            metrics.observe_generation(body.model, stream.result)
            if (err := _result_error(stream.result)) is not None:
                raise err
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _stream_chunks(stream, first, completion_id, created, body.model, include_usage),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    @router.post(
        "/embeddings",
        responses=error_responses(
            400,
            404,
            413,
            422,
            503,
            s400="Not valid JSON, an empty input list, or dimensions other than the model's",
            s404="The embedding model is not served by this node",
            s503="No local embedding engine, or the engine failed",
        ),
    )
    async def embeddings(body: EmbeddingRequest) -> dict[str, Any]:
        emb = getattr(node, "embeddings", None)
        if emb is None:
            raise ApiError(503, "no_embedding_engine", "this node runs no local embedding engine")
        available = _embedding_models(node)
        if available and body.model not in available:
            raise ApiError(
                404,
                "model_not_found",
                f"embedding model {body.model!r} is not served here; available: {', '.join(available)}",
                param="model",
            )
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts:
            raise ApiError(400, "empty_input", "input is an empty list", param="input")
        if len(texts) > MAX_EMBEDDING_INPUTS:
            raise ApiError(400, "too_many_inputs", f"at most {MAX_EMBEDDING_INPUTS} inputs", param="input")
        try:
            out = await emb.embed(texts, model=body.model, priority=Priority.NORMAL)
        except Exception as exc:  # noqa: BLE001
            raise _engine_error(exc) from None
        vectors = np.asarray(out.vectors, dtype=np.float32)
        if body.dimensions is not None and body.dimensions != vectors.shape[1]:
            raise ApiError(
                400,
                "unsupported",
                f"dimensions={body.dimensions} is not supported; {body.model} has {vectors.shape[1]}",
                param="dimensions",
            )
        data = []
        for i, vec in enumerate(vectors):
            value: Any = (
                base64.b64encode(vec.astype("<f4").tobytes()).decode()
                if body.encoding_format == "base64"
                else vec.tolist()
            )
            data.append({"object": "embedding", "index": i, "embedding": value})
        # Word counts stand in for token counts: the usage field is informational here.
        tokens = sum(len(t.split()) for t in texts)
        return {
            "object": "list",
            "data": data,
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return router


async def _stream_chunks(
    stream: Any,
    first: TokenEvent | None,
    completion_id: str,
    created: int,
    model: str,
    include_usage: bool,
) -> AsyncIterator[str]:
    """OpenAI `chat.completion.chunk`s from an engine InferenceStream, then `[DONE]`.
    Closing early (client gone) closes the stream, which aborts the generation."""

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if include_usage:
            body["usage"] = None
        return body

    try:
        yield _sse(chunk({"role": "assistant", "content": ""}))
        if first is not None:
            if first.text:
                yield _sse(chunk({"content": first.text}))
            async for event in stream:
                if event.text:
                    yield _sse(chunk({"content": event.text}))
        result: InferenceResult | None = stream.result
        if result is None:
            yield _sse(error_body(503, "engine_error", "the engine ended the stream without a result"))
        else:
            if first is not None:
                metrics.observe_generation(model, result)
            if (err := _result_error(result)) is not None:
                yield _sse(error_body(err.status, err.code, err.message))
            else:
                yield _sse(chunk({}, result.finish_reason))
                if include_usage:
                    usage_chunk = chunk({})
                    usage_chunk["choices"] = []
                    usage_chunk["usage"] = _usage(result)
                    yield _sse(usage_chunk)
        yield "data: [DONE]\n\n"
    except Exception as exc:  # noqa: BLE001 - headers are out: report in-band
        log.error("chat_stream_failed", request_id=completion_id, error=repr(exc))
        yield _sse(error_body(503, "engine_error", f"the local engine failed: {type(exc).__name__}"))
        yield "data: [DONE]\n\n"
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()  # no-op when finished; aborts a generation still running
