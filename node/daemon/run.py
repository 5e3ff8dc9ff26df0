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

import os
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio

from node import identity as identity_mod
from node import wire
from node.clock import now_ms
from node.config import Settings
from node.daemon.advert import NodeAdvert
from node.daemon.compute import EngineCompute
from node.daemon.datadir import lock_data_dir, remove_node_json, write_node_json
from node.daemon.facade import DaemonFacade
from node.daemon.startup_errors import StartupError, port_error, preflight
from node.logs import get_logger
from node.orchestrator.committee import Committees
from node.orchestrator.config import OrchestratorConfig
from node.orchestrator.orchestrator import Orchestrator
from node.store import Store

log = get_logger(__name__)

__all__ = ["run_daemon", "serve"]


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
    from node.api.app import create_app
    from node.p2p.config import config_from_settings
    from node.p2p.gossip import GossipNode

    shutdown = shutdown if shutdown is not None else trio.Event()
    data_dir = Path(settings.data_dir)
    identity = identity_mod.load_or_create(data_dir)
    lock = lock_data_dir(data_dir)
    # The identity puzzle (node.puzzle): solved here once if `rakis init` did not; every
    # frame this node signs then carries its nonce, and peers check it before any work.
    solution = identity_mod.ensure_puzzle(identity, data_dir, settings.puzzle_difficulty)
    if solution.solved:
        log.info("identity_puzzle_solved", difficulty=solution.difficulty, seconds=round(solution.seconds, 2))
    wire.register_puzzle(identity.public_key, solution.nonce)
    try:
        # Before anything slow: a wrong model name or a taken port must not cost an engine load.
        preflight(settings)
    except BaseException:
        lock.close()
        raise
    try:
        store = Store(data_dir)
    except BaseException:
        lock.close()
        raise
    threads = _configure_threads(settings)
    registry = ModelRegistry({k: str(v) for k, v in settings.model_paths.items()})
    device = None if settings.device == "auto" else settings.device
    # Consensus needs one numeric class: a bf16 node's honest outputs fail fp32 re-checks
    # (docs/consensus.md, "Re-check calibration"), so "auto" means fp32 for the LLMs on
    # every device. A node that chooses another dtype commits under another model hash
    # (EngineCompute.model_hash), so fp32 verifiers call its outputs unavailable, not failed.
    llm_dtype = "float32" if settings.dtype == "auto" else settings.dtype
    llm = LLMEngine(registry, device=device, dtype=llm_dtype, num_threads=threads)
    # One OpenMP team per process (the LLM workers'): a second long-lived one throttles
    # both (engine.devices.own_openmp_team), and embedding a short answer needs no team.
    embeddings = EmbeddingEngine(registry, device=device, openmp_threads=1)
    advert = NodeAdvert(llm=llm, embeddings=embeddings)
    gossip = GossipNode(
        identity,
        config_from_settings(settings),
        status_provider=advert.peer_status,
        peer_info_provider=advert.peer_info,
        ban_book=store,
    )
    compute = EngineCompute(llm, embeddings, settings.embedding_model)
    committees = Committees(
        node_id=identity.node_id,
        peers=gossip.peers,
        own_workers=advert.ready_workers,
        reputation=store.reputation,
        enabled=settings.sortition,
        committee_factor=settings.committee_factor,
        slack=settings.sortition_slack,
        started_ms=now_ms(),
    )
    orchestrator = Orchestrator(
        identity=identity,
        store=store,
        compute=compute,
        publish=gossip.publish,
        config=OrchestratorConfig.from_settings(settings),
        penalize=gossip.penalize_sender,
        committees=committees,
    )
    facade = DaemonFacade(
        settings=settings,
        identity=identity,
        orchestrator=orchestrator,
        gossip=gossip,
        advert=advert,
        llm=llm,
        embeddings=embeddings,
    )
    app = create_app(facade, max_body_bytes=max(1024 * 1024, settings.wire.max_frame_bytes * 2))
    hcfg = hypercorn.config.Config()
    hcfg.bind = [f"{settings.api_host}:{settings.api_port}"]
    hcfg.accesslog = None
    hcfg.graceful_timeout = 3.0
    http_stopped = trio.Event()

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(gossip.run)
            if not gossip.listen_multiaddrs():
                # libp2p starts without a listener when its bind fails; a node nobody can reach
                # must not look healthy (preflight catches the usual case: a port in use).
                raise StartupError(
                    f"libp2p could not listen on {', '.join(settings.listen_addrs)} (port in use?); "
                    "choose another with --listen /ip4/0.0.0.0/tcp/PORT (0 picks a free one)"
                )

            async def run_http(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
                try:
                    await hypercorn.trio.serve(
                        app, hcfg, shutdown_trigger=shutdown.wait, task_status=task_status
                    )
                except (OSError, BaseExceptionGroup) as exc:  # the bind: taken since preflight looked
                    bind_error = _lone_error(exc)  # hypercorn's own nursery wraps it in a group
                    if not isinstance(bind_error, OSError) or bind_error.errno is None:
                        raise
                    where = f"{settings.api_host}:{settings.api_port}"
                    raise port_error("HTTP API", where, bind_error, "--api HOST:PORT") from None
                finally:
                    http_stopped.set()

            urls = await nursery.start(run_http)
            advert.api_url = _pick_url(urls, settings.api_host)
            log.info(
                "api_listening", api_url=advert.api_url, peer_id=gossip.peer_id, node_id=identity.node_id
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
                gossip.announce_info()  # peers learn our models now, not at the next interval

                await nursery.start(orchestrator.run, gossip.packets())
                if settings.sync:
                    await nursery.start(_history_sync(settings, gossip, store, orchestrator, compute).run)
                facade.ready = True
                info = {
                    "pid": os.getpid(),
                    "api_url": advert.api_url,
                    "peer_id": gossip.peer_id,
                    "node_id": identity.node_id,
                    "listen_addrs": gossip.listen_multiaddrs(),
                    "announce_addrs": gossip.announce_multiaddrs(),
                    "data_dir": str(data_dir),
                    "fault": str(getattr(settings.fault, "value", settings.fault)),
                    "models": llm.available_models(),
                    "started_at": advert.started_at,
                }
                write_node_json(data_dir, info)
                log.info(
                    "node_ready",
                    api_url=advert.api_url,
                    peer_id=gossip.peer_id,
                    listen_addrs=info["listen_addrs"],
                    announce_addrs=info["announce_addrs"],
                    fault=info["fault"],
                )
                print(
                    f"rakis node ready\n  api:    {advert.api_url}\n  peer:   {gossip.peer_id}\n"
                    + "".join(f"  listen: {a}\n" for a in info["listen_addrs"])
                    + "".join(f"  dial:   {a}\n" for a in info["announce_addrs"]),
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
        remove_node_json(data_dir)
        lock.close()
        log.info("stopped")


def _history_sync(
    settings: Settings, gossip: Any, store: Store, orchestrator: Orchestrator, compute: Any
) -> Any:
    """``/rakis/sync/1``: serve our history, ask (re)connecting peers for what we missed."""
    from node.p2p.sync import StoreHistory, SyncConfig, SyncService
    from node.p2p.sync_adopt import certificate_sink

    async def embed(texts: list[str], model: str) -> Any:
        return await compute.embed(texts, model=model, consensus=False, deadline_s=None)

    return SyncService(
        gossip,
        StoreHistory(store),
        on_packet=orchestrator.ingest_synced,
        on_certificate=certificate_sink(orchestrator.ingest_synced, embed),
        config=SyncConfig(window_s=settings.sync_window_s),
    )


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
