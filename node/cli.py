"""The ``rakis`` command line: the root Typer app that every package registers into.

Results go to stdout and logs/errors to stderr, so ``rakis id --json | jq`` works.
Other packages add their commands at the bottom of this file with one line each.
"""

from __future__ import annotations

import base64
import json
from enum import StrEnum
from importlib import metadata
from pathlib import Path
from typing import Annotated

import typer

from node import identity as identity_mod
from node.config import CONFIG_FILENAME, default_data_dir, write_default_config
from node.logs import configure_logging


def package_version() -> str:
    try:
        return metadata.version("rakis")
    except metadata.PackageNotFoundError:  # running from a source tree without install
        return "0.0.0+unknown"


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"
    critical = "critical"


app = typer.Typer(
    name="rakis",
    help="rakis: a node for a peer-to-peer LLM inference network with embedding-cluster consensus.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Reusable option: other modules' commands should take the data dir the same way.
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        "-d",
        help="Node data directory (default: $RAKIS_DATA_DIR, else the user data dir).",
        file_okay=False,
        show_default=False,
    ),
]


def resolve_data_dir(data_dir: Path | None) -> Path:
    """The ``--data-dir`` value, else ``RAKIS_DATA_DIR``, else the platform's user data dir."""
    return data_dir.expanduser() if data_dir is not None else default_data_dir()


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a one-line error to stderr and return the Exit to raise (``raise fail(...)``)."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"rakis {package_version()}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    log_level: Annotated[
        LogLevel,
        typer.Option("--log-level", envvar="RAKIS_LOG_LEVEL", help="Log level.", case_sensitive=False),
    ] = LogLevel.info,
    log_json: Annotated[
        bool | None,
        typer.Option(
            "--log-json/--log-console", help="Log format (default: JSON lines unless stderr is a terminal)."
        ),
    ] = None,
) -> None:
    """Global options apply to every sub-command."""
    configure_logging(log_level.value, json=log_json)
    ctx.obj = {"log_level": log_level.value, "log_json": log_json}


@app.command()
def init(
    data_dir: DataDirOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing node key (the node gets a new id).")
    ] = False,
) -> None:
    """Create the node key and a commented default config.toml in the data directory."""
    target = resolve_data_dir(data_dir)
    if identity_mod.key_path(target).exists() and not force:
        raise fail(
            f"node key {identity_mod.key_path(target)} already exists; "
            "use --force to replace it (the node will get a new id)"
        )
    try:
        ident = identity_mod.Identity.generate()
        key_file = identity_mod.save(ident, target, overwrite=force)
    except (identity_mod.IdentityError, OSError) as exc:
        raise fail(str(exc)) from None
    existed = (target / CONFIG_FILENAME).exists()
    config_file = write_default_config(target)
    typer.echo(f"node id:  {ident.node_id}")
    typer.echo(f"key:      {key_file}")
    typer.echo(f"config:   {config_file}{' (kept existing)' if existed else ''}")


@app.command("id")
def show_id(
    data_dir: DataDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print this node's id and public key."""
    target = resolve_data_dir(data_dir)
    try:
        ident = identity_mod.load(target)
    except identity_mod.IdentityError as exc:
        raise fail(str(exc)) from None
    public_b64 = base64.b64encode(ident.public_key).decode("ascii")
    if as_json:
        typer.echo(json.dumps({"node_id": ident.node_id, "public_key": public_b64, "data_dir": str(target)}))
    else:
        typer.echo(f"node id:     {ident.node_id}")
        typer.echo(f"public key:  {public_b64} (base64; the node id is its hex)")


# --- Sub-commands from other packages: one line each (with a noqa for E402), e.g. ----------
# from node.daemon_cli import node_app; app.add_typer(node_app, name="node")
# from node.client_cli import submit; app.command()(submit)
# ---------------------------------------------------------------------------------------
from node.cli_node import node_app  # noqa: E402

app.add_typer(node_app, name="node")
from node.cli_client import logs, result, submit, verify, workers_app  # noqa: E402
from node.cli_testnet import testnet_app  # noqa: E402

app.command()(submit)
app.command()(result)
app.command()(verify)
app.command()(logs)
app.add_typer(workers_app, name="workers")
app.add_typer(testnet_app, name="testnet")
