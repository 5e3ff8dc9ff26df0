"""One in-process server for tests: a trio loop in a daemon thread that serves HTTP on
127.0.0.1 over real sockets, so a synchronous test (httpx, hypothesis, schemathesis,
a browser) can reach it and run code on its loop.

Two things are served this way, through the same class:
- `InProcessServer.over_facade(facade)`: the API app (`node.api.app.create_app`) under
  Hypercorn's trio worker, the way the daemon serves it, over any `NodeFacade` (the API
  tests' in-memory one);
- `InProcessServer.daemon(settings)`: the whole daemon (`node.daemon.run.serve`: libp2p
  host, orchestrator, store, engines, Hypercorn).

`call(fn, *args)` runs fn on the server's loop: facades are not thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

# serve(shutdown, task_status) must call task_status.started((url, facade)) once it
# listens, then run until `shutdown` is set.
ServeFn = Callable[[trio.Event, Any], Awaitable[None]]


class InProcessServer:
    """A server on its own trio loop in a daemon thread (see the module docstring)."""

    def __init__(self, serve: ServeFn, *, name: str, facade: Any = None, settings: Any = None) -> None:
        self.facade = facade
        self.settings = settings
        self.url = ""
        self.error: BaseException | None = None
        self._serve = serve
        self._token: trio.lowlevel.TrioToken | None = None
        self._shutdown: trio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- the two kinds --------------------------------------------------------------------

    @classmethod
    def over_facade(cls, facade: Any, **app_kwargs: Any) -> InProcessServer:
        """The API app over `facade`, under Hypercorn's trio worker (not started)."""

        async def serve(shutdown: trio.Event, task_status: Any) -> None:
            from hypercorn.config import Config
            from hypercorn.trio import serve as hypercorn_serve

            from node.api.app import create_app

            config = Config()
            config.bind = ["127.0.0.1:0"]
            config.accesslog = None
            config.graceful_timeout = 1.0
            app = create_app(facade, **app_kwargs)
            async with trio.open_nursery() as nursery:
                binds = await nursery.start(
                    lambda task_status: hypercorn_serve(
                        app, config, shutdown_trigger=shutdown.wait, task_status=task_status
                    )
                )
                task_status.started((binds[0], facade))

        return cls(serve, name="inprocess-api", facade=facade, settings=getattr(facade, "settings", None))

    @classmethod
    def daemon(cls, settings: Any) -> InProcessServer:
        """The real daemon `node.daemon.run.serve(settings)` (not started). Give
        `api_port=0` for any free port; `facade` is the daemon's facade once started."""

        async def serve(shutdown: trio.Event, task_status: Any) -> None:
            from node.daemon.run import serve as daemon_serve

            async with trio.open_nursery() as nursery:
                facade = await nursery.start(
                    lambda task_status: daemon_serve(settings, shutdown=shutdown, task_status=task_status)
                )
                # The URL the daemon advertises (what it writes to node.json).
                url = getattr(facade, "api_url", None) or facade.advert.api_url
                task_status.started((url, facade))

        return cls(serve, name="inprocess-node", settings=settings)

    # -- life cycle -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self.error = exc
        finally:
            self._started.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            self.url, self.facade = await nursery.start(self._serve, self._shutdown)
            self._started.set()

    def start(self, timeout: float = 180) -> InProcessServer:
        self._thread.start()
        self._started.wait(timeout)
        if self.error is not None:
            raise RuntimeError(f"{self._thread.name} failed to start") from self.error
        if not self.url:
            raise RuntimeError(f"{self._thread.name} not serving after {timeout} s")
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    @property
    def stopped(self) -> bool:
        """The loop thread has ended (after `stop`, or after a crash)."""
        return not self._thread.is_alive()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run fn(*args) (sync or async) on the server's trio loop and return its result."""
        assert self._token is not None

        async def runner() -> Any:
            value = fn(*args)
            if hasattr(value, "__await__"):
                value = await value
            return value

        return trio.from_thread.run(runner, trio_token=self._token)

    def stop(self, timeout: float = 30) -> None:
        """Set the shutdown event and wait for the thread; `alive` tells if it stopped."""
        if self._token is not None and self._shutdown is not None and self._thread.is_alive():
            try:
                trio.from_thread.run_sync(self._shutdown.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join(timeout)


def daemon_settings(
    data_dir: Path,
    *,
    model: str,
    model_dir: Path,
    embedding_model: str,
    admin_token: str | None,
    **overrides: Any,
) -> Any:
    """Settings for `InProcessServer.daemon`: loopback only, no mDNS, one local model from
    `model_dir`, one torch thread, short reveal windows, any free API port; `overrides` win."""
    from node.config import load_settings

    values: dict[str, Any] = {
        "api_host": "127.0.0.1",
        "api_port": 1,  # replaced by 0 (any free port) below, as `rakis node start` does
        "listen_addrs": ["/ip4/127.0.0.1/tcp/0"],
        "mdns": False,
        "llm_models": {model: 1},
        "model_paths": {model: str(model_dir)},
        "embedding_model": embedding_model,
        "torch_threads": 1,
        "admin_token": admin_token,
        "reveal_grace_s": 0.3,
        "reveal_window_s": 8.0,
    }
    values.update(overrides)
    return load_settings(data_dir, **values).model_copy(update={"api_port": 0})
