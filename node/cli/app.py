"""The ``rakis`` command line: the root Typer app that every package registers into.

Results go to stdout and logs/errors to stderr, so ``rakis id --json | jq`` works.
Each command group lives in its own module and is registered at the bottom of this file.
"""

from __future__ import annotations

import base64
import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from consensus.puzzle import DEFAULT_DIFFICULTY
from node import identity as identity_mod
from node.cli.client_group import logs, result, submit, verify, workers_app
from node.cli.common import DataDirOption, fail, resolve_data_dir
from node.cli.models_group import models_app
from node.cli.node_group import node_app
from node.cli.testnet_group import testnet_app
from node.config import CONFIG_FILENAME, write_default_config
from node.logs import configure_logging
from node.version import package_version


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
    puzzle_difficulty: Annotated[
        int,
        typer.Option(
            "--puzzle-difficulty",
            envvar="RAKIS_PUZZLE_DIFFICULTY",
            min=0,
            max=40,
            help="Identity puzzle bits (peers refuse packets from identities without one).",
        ),
    ] = DEFAULT_DIFFICULTY,
) -> None:
    """Create the node key, solve its identity puzzle, and write a commented default config.toml."""
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
    solution = _solve_puzzle(ident, target, puzzle_difficulty)
    typer.echo(f"node id:  {ident.node_id}")
    typer.echo(f"key:      {key_file}")
    typer.echo(f"config:   {config_file}{' (kept existing)' if existed else ''}")
    typer.echo(
        f"puzzle:   {identity_mod.puzzle_path(target)} (difficulty {solution.difficulty}, "
        f"solved in {solution.seconds:.1f} s)"
    )


def _solve_puzzle(ident: identity_mod.Identity, target: Path, difficulty: int) -> identity_mod.PuzzleSolution:
    """Solve the identity puzzle with a progress bar on stderr (the bar tracks the
    mean number of hashes; the real count is geometric, so it may end early or late)."""
    from rich.progress import BarColumn, Progress, TimeElapsedColumn

    from consensus.puzzle import expected_hashes
    from node.cli.progress import stderr_console

    with Progress(
        "identity puzzle",
        BarColumn(),
        "{task.percentage:>3.0f}%",
        TimeElapsedColumn(),
        console=stderr_console(),
        transient=True,
    ) as bar:
        task = bar.add_task("puzzle", total=expected_hashes(difficulty))
        solution = identity_mod.ensure_puzzle(
            ident, target, difficulty, progress=lambda tried, _exp: bar.update(task, completed=tried)
        )
    return solution


@app.command("id")
def show_id(
    data_dir: DataDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print this node's id, its libp2p peer id and the multiaddrs it would announce."""
    from node.config import ConfigError, load_settings
    from node.p2p.addresses import dialable_addrs
    from node.p2p.libp2p_compat import peer_id_from_public_key

    target = resolve_data_dir(data_dir)
    try:
        ident = identity_mod.load(target)
    except identity_mod.IdentityError as exc:
        raise fail(str(exc)) from None
    try:
        settings = load_settings(target)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    peer_id = str(peer_id_from_public_key(ident.public_key))
    # From config, not a running node: a listen port of 0 is only known once it runs
    # (its node.json then has the real ones).
    addrs = dialable_addrs(settings.listen_addrs, peer_id=peer_id, announce=settings.announce_addrs)
    public_b64 = base64.b64encode(ident.public_key).decode("ascii")
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "node_id": ident.node_id,
                    "peer_id": peer_id,
                    "public_key": public_b64,
                    "addrs": addrs,
                    "data_dir": str(target),
                }
            )
        )
    else:
        typer.echo(f"node id:     {ident.node_id}")
        typer.echo(f"peer id:     {peer_id}")
        typer.echo(f"public key:  {public_b64} (base64; the node id is its hex)")
        for a in addrs:
            typer.echo(f"addr:        {a}")


# Command groups, one module each (they import only ``node.cli.common``, never this file).
app.add_typer(node_app, name="node")
app.command()(submit)
app.command()(result)
app.command()(verify)
app.command()(logs)
app.add_typer(workers_app, name="workers")
app.add_typer(testnet_app, name="testnet")
app.add_typer(models_app, name="models")
