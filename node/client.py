"""The signing client: the user's own key, signed requests, a small HTTP client for a node.

A request is signed by the *client*, not by the node it is sent to: the node only
relays it, so any node on the network can check who asked and that nobody changed the
security frame on the way. The client key is separate from any node key and lives in
the user's config directory (``client.key``, 64 hex chars, mode 0600), created on
first use.

    ident = load_or_create_client_key()
    frame = sign_request(build_request("Hi", quorum=3), ident)
    with NodeClient("http://127.0.0.1:8420") as node:
        rid = node.submit(frame)
        final = node.wait(rid)            # polls; the CLI uses node.cli.progress.watch_request
        print(result_summary(final))

Before signing, ``node.quorum_reach(models, embedding_model, quorum)`` says how many known
nodes (the node itself and its peers) serve the request's models: a quorum larger than
that cannot be met, and the request would only fail at its deadline.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import platformdirs
from pydantic import ValidationError

from consensus.clustering import DEFAULT_SEC_DISTANCE
from node import wire
from node.config import DEFAULT_EMBEDDING_MODEL, DEFAULT_LLM_MODEL
from node.identity import Identity

FINAL_STATES = frozenset({"succeeded", "failed", "expired"})
DEFAULT_NODE_URL = "http://127.0.0.1:8420"
NODE_URL_ENV = "RAKIS_NODE"
CLIENT_KEY_ENV = "RAKIS_CLIENT_KEY"
CLIENT_KEY_FILENAME = "client.key"

__all__ = [
    "DEFAULT_NODE_URL",
    "FINAL_STATES",
    "ClientError",
    "NodeClient",
    "QuorumReach",
    "build_request",
    "default_client_key_path",
    "default_node_url",
    "load_or_create_client_key",
    "result_summary",
    "sign_request",
]


class ClientError(Exception):
    """Anything the client cannot do, with a message fit to show the user as is."""

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


# ---- the client key ------------------------------------------------------------------------


def default_client_key_path() -> Path:
    """``$RAKIS_CLIENT_KEY``, else ``<user config dir>/rakis/client.key``."""
    env = os.environ.get(CLIENT_KEY_ENV)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_config_dir("rakis")) / CLIENT_KEY_FILENAME


def load_or_create_client_key(path: Path | None = None) -> Identity:
    """Load the client's ed25519 key, creating it (0600, parents 0700) if it is missing.

    A key file that exists but is unreadable or malformed is an error, never silently
    replaced: replacing it would change the client's identity.
    """
    path = (path or default_client_key_path()).expanduser()
    if path.exists():
        try:
            text = path.read_text(encoding="ascii").strip()
            seed = bytes.fromhex(text)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ClientError(f"client key {path} is unreadable or not hex: {exc}") from None
        if len(seed) != 32:
            raise ClientError(f"client key {path} must hold 64 hex characters, it holds {len(text)}")
        # Like the node key: a secret others can read is refused, never used.
        mode = path.stat().st_mode
        if os.name == "posix" and mode & 0o077:
            raise ClientError(
                f"client key {path} has mode {mode & 0o777:04o}; it must be readable by its "
                f"owner only. Fix with: chmod 600 {path}"
            )
        return Identity.from_seed(seed)
    ident = Identity.generate()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # O_EXCL: two clients starting at once must not each write a different key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_or_create_client_key(path)
    except OSError as exc:
        raise ClientError(f"cannot create client key {path}: {exc}") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(ident.seed.hex() + "\n")
    return ident


# ---- requests --------------------------------------------------------------------------------


def build_request(
    prompt: str,
    *,
    models: Sequence[str] = (DEFAULT_LLM_MODEL,),
    quorum: int = 3,
    max_time_s: float = 120.0,
    sec_distance: float = DEFAULT_SEC_DISTANCE,
    sec_percentage: float = 1.0,
    temperature: float = 0.0,
    max_tokens: int = 64,
    embedding_model: str = DEFAULT_EMBEDDING_MODEL,
    seed: int | None = None,
    commit_window_s: float | None = None,
    limits: wire.WireLimits | None = None,
    messages: Sequence[dict[str, str]] | None = None,
    stop: Sequence[str] | None = None,
) -> wire.InferenceRequest:
    """An ``InferenceRequest`` with its security frame, checked against the wire limits.

    ``commit_window_s``: how long nodes may take to commit (None: the protocol default,
    a quarter of ``max_time_s`` within 2-60 s). Every request waits this long before
    reveals open, so a client with fast nodes shortens it; too short shuts out slow
    honest nodes. ``messages``: the conversation before ``prompt`` (``{"role", "content"}``,
    roles system/user/assistant); ``stop``: strings that end generation. Raises
    ``ClientError`` naming every bad field, so nothing invalid is ever signed.
    """
    if not (max_time_s > 0):
        raise ClientError(f"max_time must be > 0 seconds, got {max_time_s}")
    data = {
        "prompt": prompt,
        "accepted_models": list(models),
        "temperature": float(temperature),
        "max_tokens": int(max_tokens),
        "seed": seed,
        "security_frame": {
            "quorum": int(quorum),
            "max_time_ms": round(max_time_s * 1000),
            "sec_distance": float(sec_distance),
            "sec_percentage": float(sec_percentage),
            "embedding_model": embedding_model,
            "commit_window_ms": None if commit_window_s is None else round(commit_window_s * 1000),
        },
    }
    if messages:
        data["messages"] = [dict(m) for m in messages]
    if stop:
        data["stop"] = list(stop)
    try:
        body = wire.InferenceRequest.model_validate(
            data, strict=False, context={"limits": limits or wire.DEFAULT_LIMITS}
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}" for e in exc.errors()
        )
        raise ClientError(f"invalid request: {problems}") from None
    if sec_distance > 2.0:
        raise ClientError(f"invalid request: sec_distance must be in [0, 2] (cosine), got {sec_distance}")
    return body


def sign_request(body: wire.InferenceRequest, identity: Identity) -> bytes:
    """The signed frame nodes accept at ``POST /v1/requests``; its id is ``frame_request_id``."""
    try:
        return wire.encode(body, identity.signing_key)
    except wire.WireError as exc:
        raise ClientError(f"request cannot be sent: {exc}") from None


def frame_request_id(frame: bytes) -> str:
    """The request id of a signed frame (hex sha256 of its payload), as nodes compute it."""
    return wire.decode(frame, check_time=False).packet_id


def result_summary(view: dict[str, Any]) -> dict[str, Any]:
    """The stable, user-facing part of a request view (what ``--json`` prints)."""
    members = [
        {k: m.get(k) for k in ("node_id", "inference_id") if k in m} for m in view.get("members") or []
    ]
    return {
        "request_id": view.get("request_id"),
        "state": view.get("state"),
        "answer": view.get("answer"),
        "members": members,
        "reason": view.get("reason"),
        "stage": view.get("stage"),
        "commits": len(view.get("commits") or []),
        "reveals": len(view.get("reveals") or []),
        "prompt": view.get("prompt"),
        "security_frame": view.get("security_frame"),
        "created_at": view.get("created_at"),
        "finished_at": view.get("finished_at"),
    }


# ---- can the quorum be reached? --------------------------------------------------------------

# Worker states that will answer a request: loading ones will be ready before most deadlines.
_LLM_SERVING_STATES = frozenset({"ready", "loading"})
_EMBEDDING_SERVING_STATES = frozenset({"ready", "busy"})


@dataclass(frozen=True)
class QuorumReach:
    """Which known nodes can commit to a request, as the node it goes to sees the network.

    A node commits only when it serves one of the accepted models *and* the request's
    embedding model (``Orchestrator._start_inference``). Peers that have announced no
    models yet (just connected, or still loading their engines) may serve them: they are
    counted apart, so a network still coming up is not mistaken for a lone node.
    """

    quorum: int
    serving: tuple[str, ...]  # node ids, this node first when it serves
    self_serves: bool
    peers: int  # peers the node knows (not counting itself)
    unannounced: int  # of those, how many have not announced any model yet

    @property
    def reachable(self) -> bool:
        """Enough nodes are known to serve the request."""
        return len(self.serving) >= self.quorum

    @property
    def possible(self) -> bool:
        """Enough, if the peers that have not announced their models yet serve them too."""
        return len(self.serving) + self.unannounced >= self.quorum

    def summary(self, models: Sequence[str], embedding_model: str) -> str:
        """E.g. ``1 known node serves smollm2-135m-instruct (with all-minilm-l6-v2): this node; 0 peers``."""
        n = len(self.serving)
        names = " or ".join(models)
        here = "this node" if self.self_serves else "not this node"
        peers = n - int(self.self_serves)
        return (
            f"{n} known node{'' if n == 1 else 's'} serve{'s' if n == 1 else ''} {names} "
            f"(with {embedding_model}): {here}, {peers} of its {self.peers} peer{'' if self.peers == 1 else 's'}"
        )


def _serves(models: Sequence[str], embedding_model: str, llm: Sequence[str], emb: Sequence[str]) -> bool:
    return any(m in llm for m in models) and embedding_model in emb


def quorum_reach(
    *,
    node: dict[str, Any],
    workers: list[dict[str, Any]],
    peers: list[dict[str, Any]],
    models: Sequence[str],
    embedding_model: str,
    quorum: int,
) -> QuorumReach:
    """``QuorumReach`` from a node's ``/v1/node``, ``/v1/workers`` and ``/v1/peers`` answers."""
    self_id = node.get("node_id")
    llm = [
        w.get("model") for w in workers if w.get("kind") == "llm" and w.get("state") in _LLM_SERVING_STATES
    ]
    emb = [
        w.get("model")
        for w in workers
        if w.get("kind") == "embedding" and w.get("state") in _EMBEDDING_SERVING_STATES
    ]
    # A silent node (fault injection) never commits.
    self_serves = _serves(models, embedding_model, llm, emb) and node.get("fault") != "silent"
    serving: list[str] = [str(self_id)] if self_serves else []
    seen = {self_id}
    unannounced = 0
    for p in peers:
        nid = p.get("node_id")
        if nid in seen:
            continue
        seen.add(nid)
        if not p.get("models"):
            # No peer_info yet, or one sent while its engines were still loading (the
            # next comes within GossipConfig.info_interval_s): it may well serve them.
            unannounced += 1
        elif _serves(models, embedding_model, p.get("models") or [], p.get("embedding_models") or []):
            serving.append(str(nid))
    return QuorumReach(
        quorum=quorum,
        serving=tuple(serving),
        self_serves=self_serves,
        peers=len(seen) - 1,
        unannounced=unannounced,
    )


# ---- HTTP ------------------------------------------------------------------------------------


def default_node_url() -> str:
    return os.environ.get(NODE_URL_ENV) or DEFAULT_NODE_URL


def _error_message(resp: httpx.Response) -> tuple[str, str | None]:
    """The API's ``{"error": {"code", "message"}}`` or the raw text."""
    try:
        err = resp.json().get("error") or {}
        return str(err.get("message") or resp.text), err.get("code")
    except (ValueError, AttributeError):
        return resp.text.strip()[:500] or resp.reason_phrase, None


class NodeClient:
    """A thin synchronous client for one node's HTTP API; every failure is a ClientError."""

    def __init__(self, url: str | None = None, *, timeout: float = 30.0, admin_token: str | None = None):
        self.url = (url or default_node_url()).rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ClientError(f"node URL must start with http:// or https://, got {self.url!r}")
        headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
        self.http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers)

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach node {self.url}: {exc}") from None
        if resp.status_code >= 400:
            message, code = _error_message(resp)
            raise ClientError(
                f"node {self.url} answered {resp.status_code}: {message}", code=code, status=resp.status_code
            )
        return resp

    def submit(self, frame: bytes) -> str:
        """POST the signed frame; returns the request id the node assigned (== ours)."""
        resp = self._call(
            "POST", "/v1/requests", content=frame, headers={"content-type": "application/octet-stream"}
        )
        return str(resp.json()["request_id"])

    def get(self, request_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/requests/{request_id}").json()

    def wait(
        self,
        request_id: str,
        *,
        timeout: float = 900.0,
        interval: float = 0.5,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the request is final (the CLI follows SSE instead, see node.cli.progress)."""
        end = time.monotonic() + timeout
        while True:
            view = self.get(request_id)
            if on_update is not None:
                on_update(view)
            if view.get("state") in FINAL_STATES:
                return view
            if time.monotonic() >= end:
                raise ClientError(f"request {request_id} not final after {timeout:.0f} s")
            time.sleep(interval)

    def ready(self) -> bool:
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def workers(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/workers").json()["workers"]

    def peers(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/peers").json()["peers"]

    def node_info(self) -> dict[str, Any]:
        return self._call("GET", "/v1/node").json()

    def quorum_reach(self, models: Sequence[str], embedding_model: str, quorum: int) -> QuorumReach:
        """How many known nodes serve ``models`` with ``embedding_model`` (see ``QuorumReach``)."""
        try:
            return quorum_reach(
                node=self.node_info(),
                workers=self.workers(),
                peers=self.peers(),
                models=models,
                embedding_model=embedding_model,
                quorum=quorum,
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ClientError(
                f"node {self.url} answered its peer list in an unexpected shape: {exc}"
            ) from None

    def scale_workers(self, model: str, n: int) -> list[dict[str, Any]]:
        return self._call("POST", "/v1/workers", json={"model": model, "n": n}).json()["workers"]

    def logs(self, *, search: str | None = None, last_n: int = 200) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"last_n": last_n}
        if search:
            params["search"] = search
        return self._call("GET", "/v1/logs", params=params).json()["logs"]


def write_certificate(view: dict[str, Any], path: Path) -> Path:
    """Save a request's certificate as JSON (``rakis verify`` reads it back)."""
    cert = view.get("certificate")
    if not cert:
        raise ClientError(f"request {view.get('request_id')} has no certificate (state {view.get('state')})")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cert, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


# ---- offline certificate checks -------------------------------------------------------------


def quiet_library_logs() -> None:
    """The CLI's output is ours: per-request httpx lines are noise at INFO."""
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _quiet_model_loading() -> None:
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
