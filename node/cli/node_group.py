"""`rakis node start`: run the daemon in the foreground (flags override the config file)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from node.cli.common import DataDirOption, fail, resolve_data_dir
from node.config import ConfigError, FaultMode, load_settings
from node.daemon.startup_errors import one_line

node_app = typer.Typer(name="node", help="Run a rakis node.", no_args_is_help=True)


def _parse_api(api: str) -> tuple[str, int]:
    host, sep, port = api.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise typer.BadParameter(f"{api!r} is not HOST:PORT (e.g. 127.0.0.1:8420; port 0 picks a free one)")
    return host.strip("[]"), int(port)


def _parse_models(models: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for spec in models:
        name, sep, count = spec.partition("=")
        if not name or (sep and not count.isdigit()):
            raise typer.BadParameter(f"{spec!r} is not NAME or NAME=WORKERS (e.g. smollm2-135m-instruct=1)")
        out[name] = int(count) if sep else 1
    return out


@node_app.command("start")
def start(
    ctx: typer.Context,
    data_dir: DataDirOption = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Config file (default: <data-dir>/config.toml).")
    ] = None,
    listen: Annotated[
        list[str] | None,
        typer.Option(
            "--listen", "-l", help="libp2p listen multiaddr (repeatable), e.g. /ip4/0.0.0.0/tcp/4001."
        ),
    ] = None,
    api: Annotated[
        str | None, typer.Option("--api", help="HTTP API HOST:PORT (default 127.0.0.1:8420; port 0 = any).")
    ] = None,
    bootstrap: Annotated[
        list[str] | None,
        typer.Option("--bootstrap", "-b", help="Peer multiaddr with /p2p/<id> to dial (repeatable)."),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="LLM to serve as NAME or NAME=WORKERS (repeatable)."),
    ] = None,
    embedding_model: Annotated[
        str | None, typer.Option("--embedding-model", help="Embedding model name.")
    ] = None,
    embedding_workers: Annotated[int | None, typer.Option("--embedding-workers", min=1, max=64)] = None,
    torch_threads: Annotated[
        int | None,
        typer.Option("--torch-threads", min=0, max=1024, help="torch CPU threads (0 = automatic)."),
    ] = None,
    mdns: Annotated[bool | None, typer.Option("--mdns/--no-mdns", help="LAN peer discovery.")] = None,
    fault: Annotated[
        FaultMode | None,
        typer.Option(
            "--fault", help="Deliberately faulty behaviour for tests and demos.", case_sensitive=False
        ),
    ] = None,
    admin_token: Annotated[
        str | None,
        typer.Option("--admin-token", envvar="RAKIS_ADMIN_TOKEN", help="Token for admin endpoints."),
    ] = None,
) -> None:
    """Start the node: libp2p host, HTTP API and orchestrator in one process.

    Every start-up failure (an unknown model, a model the engine cannot run, a port in
    use, a bad bootstrap address, an unusable data directory) ends in one line on stderr
    that names the fix, and exit code 1 (see ``node.daemon.startup_errors``).
    """
    overrides: dict[str, object] = {}
    if listen:
        overrides["listen_addrs"] = list(listen)
    if api is not None:
        overrides["api_host"], port = _parse_api(api)
        overrides["api_port"] = port
    if bootstrap:
        overrides["bootstrap"] = list(bootstrap)
    if model:
        overrides["llm_models"] = _parse_models(model)
    if embedding_model is not None:
        overrides["embedding_model"] = embedding_model
    if embedding_workers is not None:
        overrides["embedding_workers"] = embedding_workers
    if torch_threads is not None:
        overrides["torch_threads"] = torch_threads
    if mdns is not None:
        overrides["mdns"] = mdns
    if fault is not None:
        overrides["fault"] = fault
    if admin_token is not None:
        overrides["admin_token"] = admin_token
    port0 = overrides.get("api_port") == 0
    if port0:
        overrides["api_port"] = 1  # validated as 1-65535; replaced by 0 below (any free port)
    try:
        settings = load_settings(resolve_data_dir(data_dir), config_file=config, **overrides)
    except ConfigError as e:
        raise fail(one_line(str(e))) from None
    if port0:
        settings = settings.model_copy(update={"api_port": 0})

    from node.daemon.run import run_daemon
    from node.daemon.startup_errors import explain

    try:
        run_daemon(settings)
    except Exception as exc:  # noqa: BLE001 - every failure ends as one line (see below)
        line = explain(exc)
        if line is not None:
            raise fail(line) from None
        if settings.log_level == "debug" or (ctx.obj or {}).get("log_level") == "debug":
            raise  # the traceback, for whoever debugs it
        raise fail(
            f"the node stopped on an unexpected {type(exc).__name__}: {one_line(str(exc))} "
            "(run `rakis --log-level debug node start ...` for the traceback, and report it)"
        ) from None
