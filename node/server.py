"""The `rakis node start` runtime: one trio loop for gossip, the HTTP API and the orchestrator.

Start-up order is chosen so a supervisor can watch progress: the libp2p host first
(peers can connect), then the HTTP API (``/healthz`` answers, ``/readyz`` says not
ready), then the engines load (seconds), then the orchestrator resumes stored
requests and the node reports ready and writes ``node.json``. Engine workers run on
their own threads; only the trio loop touches the orchestrator and the store.

SIGINT/SIGTERM shut down gracefully: stop accepting requests, stop the HTTP server,
stop the orchestrator (everything it promised is already on disk), close the host
and the engines. A second signal exits at once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import trio

from node import identity as identity_mod
from node import wire
from node.config import Settings
from node.domain import DomainConfig, InferenceFailed, Orchestrator
from node.facade import RequestRejected
from node.logs import get_logger
from node.store import Store, StoreError

log = get_logger(__name__)

__all__ = ["DaemonFacade", "EngineCompute", "NODE_JSON", "run_daemon", "serve"]

NODE_JSON = "node.json"
LOCK_FILE = "daemon.lock"


def _version() -> str:
    try:
        from importlib import metadata

        return metadata.version("rakis")
    except Exception:
        return "0.0.0+unknown"


class EngineCompute:
    """``domain.Compute`` over the engine services (LLMEngine, EmbeddingEngine)."""

    def __init__(self, llm: Any, embeddings: Any, embedding_model: str) -> None:
        self.llm = llm
        self.embeddings = embeddings
        self.embedding_model = embedding_model

    def llm_models(self) -> list[str]:
        return self.llm.available_models() if self.llm is not None else []

    def embedding_models(self) -> list[str]:
        return self.embeddings.available_models() if self.embeddings is not None else []

    async def generate(
        self, request_id: str, body: wire.InferenceRequest, models: list[str], deadline_s: float
    ) -> tuple[str, str]:
        from engine import LLMRequest, NoWorkerError, SamplingParams, UnknownModelError

        req = LLMRequest(
            models=models,
            messages=[{"role": "user", "content": body.prompt}],
            sampling=SamplingParams(temperature=body.temperature, max_tokens=body.max_tokens, seed=body.seed),
            deadline=deadline_s,
            request_id=f"rakis-{request_id[:16]}-{uuid.uuid4().hex[:8]}",
        )
        try:
            res = await self.llm.run_inference_non_streaming(req)
        except (NoWorkerError, UnknownModelError, ValueError) as e:
            raise InferenceFailed(str(e)) from None
        from node import metrics

        metrics.observe_generation(res.model or models[0], res)
        if res.finish_reason not in ("stop", "length"):
            raise InferenceFailed(f"{res.finish_reason}: {res.error or ''}".strip(": "))
        return res.model or models[0], res.text

    async def embed(
        self, texts: list[str], *, model: str, consensus: bool, deadline_s: float | None
    ) -> np.ndarray:
        from engine import Priority

        res = await self.embeddings.embed(
            texts,
            model=model,
            priority=Priority.CONSENSUS if consensus else Priority.NORMAL,
            deadline=deadline_s,
        )
        return np.asarray(res.vectors)


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    return str(obj)


class DaemonFacade:
    """``node.facade.NodeFacade`` for the real daemon (used by ``node.api.create_app``)."""

    def __init__(
        self,
        *,
        settings: Settings,
        identity: identity_mod.Identity,
        orchestrator: Orchestrator,
        gossip: Any,
        llm: Any,
        embeddings: Any,
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.orchestrator = orchestrator
        self.gossip = gossip
        self.llm = llm
        self.embeddings = embeddings
        self.started_at = time.time()
        self.ready = False
        self.api_url: str | None = None

    async def submit_request(self, frame: bytes) -> str:
        if not self.ready:
            raise RequestRejected("not_ready", "the node is still loading its models")
        return await self.orchestrator.submit_request(frame)

    def get_request(self, request_id: str) -> dict[str, Any] | None:
        return self.orchestrator.get_request(request_id)

    def list_requests(self, limit: int = 50) -> list[dict[str, Any]]:
        return self.orchestrator.list_requests(limit)

    def subscribe(self, request_id: str | None = None) -> AsyncIterator[dict[str, Any]]:
        return self.orchestrator.subscribe(request_id)

    def peers(self) -> list[dict[str, Any]]:
        rep = self.orchestrator.reputation()
        out = []
        for p in self.gossip.peers():
            d = p.as_dict() if hasattr(p, "as_dict") else _jsonable(p)
            d.setdefault("last_seen", d.get("last_seen_ms"))
            d["reputation"] = rep.get(d.get("node_id", ""), {})
            out.append(_jsonable(d))
        return out

    def workers(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.llm is not None:
            out += [{"kind": "llm", **_jsonable(w)} for w in self.llm.worker_states()]
        if self.embeddings is not None:
            out += [{"kind": "embedding", **_jsonable(w)} for w in self.embeddings.worker_states()]
        return out

    async def scale_workers(self, model: str, n: int) -> None:
        from engine import ModelKind, UnknownModelError

        if not isinstance(n, int) or n < 0 or n > 64:
            raise ValueError(f"worker count must be an integer in 0..64, got {n!r}")
        try:
            if self.embeddings is not None and model in self.embeddings.registry.names(ModelKind.EMBEDDING):
                if n < 1:
                    raise ValueError("a node needs at least one embedding worker to verify reveals")
                await self.embeddings.scale_workers(model, n)
            elif self.llm is not None:
                await self.llm.scale_workers(model, n)
            else:
                raise ValueError("this node has no LLM engine")
        except UnknownModelError as e:
            raise ValueError(str(e)) from None

    def logs(self, last_n: int = 200, search: str | None = None) -> list[dict[str, Any]]:
        items = list(self.orchestrator.logs(last_n=last_n))
        for eng, source in ((self.llm, "llm"), (self.embeddings, "embedding")):
            if eng is None:
                continue
            for e in eng.logs(last_n):
                d = e.to_dict()
                d["ts"] = int(d["ts"] * 1000)
                d["source"] = source
                d["event"] = d.pop("type", None)
                items.append(_jsonable(d))
        items.sort(key=lambda e: e.get("ts") or 0)
        if search:
            s = search.lower()
            items = [e for e in items if s in json.dumps(e, default=str).lower()]
        return items[-last_n:]

    def recent_packets(self, limit: int = 100) -> list[dict[str, Any]]:
        return self.orchestrator.recent_packets(limit)

    def is_ready(self) -> bool:
        return self.ready and self.gossip.is_running and self.orchestrator.accepting

    # -- gossip providers -----------------------------------------------------------

    def peer_info(self) -> wire.PeerInfo | None:
        workers: dict[str, int] = {}
        if self.llm is not None:
            for w in self.llm.worker_states():
                if w.state == "ready":
                    workers[w.model] = workers.get(w.model, 0) + 1
        return wire.PeerInfo(
            models=self.llm.available_models() if self.llm is not None else [],
            embedding_models=self.embeddings.available_models() if self.embeddings is not None else [],
            workers=workers,
            device=getattr(self.llm, "device", "cpu") if self.llm is not None else "cpu",
            version=_version(),
            api_url=self.api_url,
        )

    def peer_status(self) -> wire.PeerStatus | None:
        total = busy = 0
        tps = 0.0
        if self.llm is not None:
            for w in self.llm.worker_states():
                if w.state == "ready":
                    total += 1
                    busy += int(w.active_requests > 0)
                    tps += w.tokens_per_s or 0.0
        queue = (self.llm.queue_depth() if self.llm is not None else 0) + self.orchestrator.queue_depth()
        return wire.PeerStatus(
            load=float(busy / total) if total else 0.0,
            queue_depth=int(queue),
            tokens_per_s=float(tps),
            busy_workers=busy,
            total_workers=total,
            uptime_s=float(time.time() - self.started_at),
        )


def _write_node_json(data_dir: Path, info: dict[str, Any]) -> Path:
    path = data_dir / NODE_JSON
    tmp = path.with_name(f".{NODE_JSON}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _configure_threads(settings: Settings) -> int:
    from engine import devices

    workers = max(1, sum(settings.llm_models.values()))
    threads = settings.torch_threads or devices.thread_budget(workers)
    return devices.apply_thread_budget(threads)


async def serve(
    settings: Settings,
    *,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[DaemonFacade] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a node until ``shutdown`` is set (or SIGINT/SIGTERM when run by ``run_daemon``)."""
    import hypercorn.config
    import hypercorn.trio

    from engine import EmbeddingEngine, LLMEngine, ModelRegistry
    from node.api import create_app
    from node.gossip import GossipNode

    shutdown = shutdown if shutdown is not None else trio.Event()
    data_dir = Path(settings.data_dir)
    identity = identity_mod.load_or_create(data_dir)
    lock = _lock_data_dir(data_dir)
    try:
        store = Store(data_dir)
    except BaseException:
        lock.close()
        raise
    threads = _configure_threads(settings)
    registry = ModelRegistry({k: str(v) for k, v in settings.model_paths.items()})
    device = None if settings.device == "auto" else settings.device
    dtype = None if settings.dtype == "auto" else settings.dtype
    llm = LLMEngine(registry, device=device, dtype=dtype, num_threads=threads)
    embeddings = EmbeddingEngine(registry, device=device)
    facade_box: list[DaemonFacade] = []
    gossip = GossipNode(
        identity,
        listen_addrs=list(settings.listen_addrs),
        bootstrap=list(settings.bootstrap),
        mdns=settings.mdns,
        limits=settings.wire,
        sender_rate=settings.rate_limit_per_peer,
        sender_burst=float(settings.rate_limit_burst),
        status_provider=lambda: facade_box[0].peer_status() if facade_box else None,
        peer_info_provider=lambda: facade_box[0].peer_info() if facade_box else None,
    )

    async def publish(frame: bytes) -> None:
        await gossip.publish(frame)

    orchestrator = Orchestrator(
        identity=identity,
        store=store,
        compute=EngineCompute(llm, embeddings, settings.embedding_model),
        publish=publish,
        config=DomainConfig.from_settings(settings),
    )
    facade = DaemonFacade(
        settings=settings,
        identity=identity,
        orchestrator=orchestrator,
        gossip=gossip,
        llm=llm,
        embeddings=embeddings,
    )
    facade_box.append(facade)
    app = create_app(facade, max_body_bytes=max(1024 * 1024, settings.wire.max_frame_bytes * 2))
    hcfg = hypercorn.config.Config()
    hcfg.bind = [f"{settings.api_host}:{settings.api_port}"]
    hcfg.accesslog = None
    hcfg.graceful_timeout = 3.0
    http_stopped = trio.Event()

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(gossip.run)

            async def run_http(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
                try:
                    await hypercorn.trio.serve(
                        app, hcfg, shutdown_trigger=shutdown.wait, task_status=task_status
                    )
                finally:
                    http_stopped.set()

            urls = await nursery.start(run_http)
            facade.api_url = _pick_url(urls, settings.api_host)
            log.info(
                "api_listening", api_url=facade.api_url, peer_id=gossip.peer_id, node_id=identity.node_id
            )

            async def cancel_startup_on_shutdown(scope: trio.CancelScope) -> None:
                await shutdown.wait()
                scope.cancel()

            with trio.CancelScope() as startup:
                nursery.start_soon(cancel_startup_on_shutdown, startup)
                t0 = time.monotonic()
                for model, n in settings.llm_models.items():
                    if n > 0:
                        await llm.scale_workers(model, n)
                await embeddings.scale_workers(settings.embedding_model, settings.embedding_workers)
                log.info("engines_loaded", seconds=round(time.monotonic() - t0, 2), torch_threads=threads)

                await nursery.start(orchestrator.run, gossip.packets())
                facade.ready = True
                info = {
                    "pid": os.getpid(),
                    "api_url": facade.api_url,
                    "peer_id": gossip.peer_id,
                    "node_id": identity.node_id,
                    "listen_addrs": gossip.listen_multiaddrs(),
                    "data_dir": str(data_dir),
                    "fault": str(getattr(settings.fault, "value", settings.fault)),
                    "models": llm.available_models(),
                    "started_at": facade.started_at,
                }
                _write_node_json(data_dir, info)
                log.info(
                    "node_ready",
                    api_url=facade.api_url,
                    peer_id=gossip.peer_id,
                    listen_addrs=info["listen_addrs"],
                    fault=info["fault"],
                )
                print(
                    f"rakis node ready\n  api:    {facade.api_url}\n  peer:   {gossip.peer_id}\n"
                    + "".join(f"  listen: {a}\n" for a in info["listen_addrs"]),
                    flush=True,
                )
                task_status.started(facade)

            if startup.cancelled_caught:
                log.info("shutdown_during_startup")
            await shutdown.wait()
            log.info("shutting_down")
            facade.ready = False
            orchestrator.stop_accepting()
            with trio.move_on_after(hcfg.graceful_timeout + 2):
                await http_stopped.wait()
            nursery.cancel_scope.cancel()
    finally:
        facade.ready = False
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_close_engines, llm, embeddings)
        store.close()
        try:
            (data_dir / NODE_JSON).unlink()
        except OSError:
            pass
        lock.close()
        log.info("stopped")


def _lock_data_dir(data_dir: Path) -> Any:
    """Hold an exclusive lock on the data dir for the daemon's lifetime: two daemons on
    one database would both answer for the same node key and interleave its state."""
    import fcntl

    path = data_dir / LOCK_FILE
    fh = open(path, "a+")  # noqa: SIM115 - held open until shutdown
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        other = fh.read().strip() or "?"
        fh.close()
        raise StoreError(f"data directory {data_dir} is in use by another rakis node (pid {other})") from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
    except OSError as e:  # e.g. a full disk: name the place, not just the errno
        try:
            fh.close()  # flushes again, and fails again on a full disk
        except OSError:
            pass
        raise StoreError(f"cannot write {path}: {e.strerror} (is the data directory full?)") from None
    return fh


def _close_engines(llm: Any, embeddings: Any) -> None:
    for eng in (llm, embeddings):
        try:
            eng.close()
        except Exception as e:  # closing must not hide the real exit reason
            log.warning("engine_close_failed", error=str(e))


def _pick_url(urls: list[str], host: str) -> str:
    for u in urls:
        if u.startswith("http://"):
            return u.rstrip("/")
    return urls[0].rstrip("/") if urls else f"http://{host}"


async def _main(settings: Settings) -> None:
    shutdown = trio.Event()

    async def watch_signals() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for sig in signals:
                if shutdown.is_set():
                    log.warning("second_signal_exiting_now", signal=signal.Signals(sig).name)
                    os._exit(130)
                log.info("signal_received", signal=signal.Signals(sig).name)
                shutdown.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_signals)
        await serve(settings, shutdown=shutdown)
        nursery.cancel_scope.cancel()


def _lone_error(exc: BaseException) -> BaseException:
    """The single error inside (nested) exception groups, else ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def run_daemon(settings: Settings) -> None:
    """Blocking entry point of ``rakis node start``.

    Trio wraps errors raised inside nurseries in exception groups; a lone start-up error
    (unreadable key, unusable data dir, port in use) is re-raised as itself so the CLI
    can print one clear line instead of a traceback."""
    try:
        trio.run(partial(_main, settings))
    except BaseExceptionGroup as group:
        lone = _lone_error(group)
        if lone is group:
            raise
        raise lone from None
