"""``rakis testnet up|status|down|demo|partition|heal``: a local network of daemons.

``up --netns`` makes each node a host of its own (a network namespace with its own
address on a bridge, as root); ``partition`` and ``heal`` cut one such node off and
bring it back, for fault tests.

The default directory is ``./.rakis-testnet`` (or ``$RAKIS_TESTNET_DIR``); every
command takes the same ``--dir``. ``demo`` brings up 3 nodes, asks the network one
question, prints the agreed answer and the certificate path, and always brings the
nodes down again, also when something fails or on Ctrl-C.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from node.cli.common import fail
from node.client import quiet_library_logs

if TYPE_CHECKING:  # node.testnet pulls in libp2p (seconds): imported only by testnet commands
    from node.testnet import Testnet

testnet_app = typer.Typer(name="testnet", help="A local testnet of rakis daemons.", no_args_is_help=True)

DirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        "-d",
        help="Testnet directory (default: $RAKIS_TESTNET_DIR, else ./.rakis-testnet).",
        file_okay=False,
        show_default=False,
    ),
]

DEMO_PROMPT = "What is the capital of France? Answer in one sentence."


def _testnet(d: Path | None) -> Testnet:
    from node.testnet import Testnet, default_testnet_dir

    return Testnet(d or default_testnet_dir())


def parse_faults(specs: list[str] | None, n: int) -> dict[int, str]:
    """``["3=garbage"]`` -> ``{3: "garbage"}``; index and mode are checked."""
    from node.config import FaultMode

    modes = [m.value for m in FaultMode]
    out: dict[int, str] = {}
    for spec in specs or []:
        index, sep, mode = spec.partition("=")
        if not sep or not index.isdigit() or mode not in modes:
            raise typer.BadParameter(f"{spec!r} is not INDEX=MODE with MODE one of {', '.join(modes)}")
        if int(index) >= n:
            raise typer.BadParameter(f"{spec!r}: node index {index} is out of range for {n} node(s)")
        out[int(index)] = mode
    return out


def _bring_up(
    tn: Testnet,
    n: int,
    models: list[str] | None,
    threads: int | None,
    timeout: float,
    faults: dict[int, str] | None = None,
    netns: bool = False,
    relayed: tuple[int, ...] = (),
) -> None:
    from node.cli.progress import NodesProgress

    table = NodesProgress([f"node-{i}" for i in range(n)])
    try:
        with table:
            tn.up(
                n,
                models=models,
                torch_threads=threads,
                faults=faults,
                timeout=timeout,
                progress=lambda name, status, pid, url: table.update(name, status, pid=pid, url=url),
                netns=netns,
                relayed=relayed,
            )
    finally:
        table.console.line()  # a non-terminal Live leaves the cursor after the table


@testnet_app.command("up")
def up(
    n: Annotated[int, typer.Option("-n", "--nodes", min=1, max=64, help="Number of nodes.")] = 3,
    dir: DirOption = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="LLM per node as NAME or NAME=WORKERS.")
    ] = None,
    torch_threads: Annotated[
        int | None, typer.Option("--torch-threads", min=1, help="Per node (default: cores // N, at least 1).")
    ] = None,
    fault: Annotated[
        list[str] | None,
        typer.Option("--fault", help="Make node INDEX faulty: INDEX=garbage|off-topic|silent (repeatable)."),
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for all nodes.")] = 600.0,
    netns: Annotated[
        bool,
        typer.Option(
            "--netns", help="Each node in its own network namespace and address (separate hosts; needs root)."
        ),
    ] = False,
    relayed: Annotated[
        list[int] | None,
        typer.Option(
            "--relayed",
            help="With --netns: node INDEX can reach only node-0, which serves as its relay (repeatable).",
        ),
    ] = None,
) -> None:
    """Start N daemons (on 127.0.0.1, or each on its own host with --netns), bootstrapped
    to each other; wait until all are ready. ``--relayed I`` hides node I behind node-0."""
    from node.netns import NetnsError, check_netns_support
    from node.testnet import TestnetError

    quiet_library_logs()
    faults = parse_faults(fault, n)
    if relayed and not netns:
        raise fail("--relayed needs --netns (a relayed node is a host with a route to node-0 only)")
    if netns:
        try:
            check_netns_support()
        except NetnsError as exc:
            raise fail(str(exc)) from None
    tn = _testnet(dir)
    try:
        _bring_up(tn, n, model, torch_threads, timeout, faults, netns=netns, relayed=tuple(relayed or ()))
    except TestnetError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted: the nodes started so far were stopped", 130) from None
    for node in tn.nodes():
        typer.echo(node.api_url)
    typer.secho(
        f"testnet of {n} node(s) up in {tn.root}; try: rakis submit 'Hello' --node {tn.nodes()[0].api_url}"
        f"\nstop it with: rakis testnet down --dir {tn.root}",
        err=True,
        dim=True,
    )


@testnet_app.command("status")
def status(
    dir: DirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list of nodes.")] = False,
) -> None:
    """Show the testnet's nodes: pid, API URL, peer id, readiness."""
    from node.testnet import TestnetError

    quiet_library_logs()
    tn = _testnet(dir)
    try:
        nodes = tn.status()
    except TestnetError as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(nodes, indent=2))
        return
    if not nodes:
        typer.echo(f"no testnet in {tn.root}")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=str(tn.root))
    for col in ("node", "pid", "ready", "peers", "fault", "api", "peer id"):
        table.add_column(col, no_wrap=True)
    for s in nodes:
        ready = "[green]yes[/]" if s["ready"] else ("[yellow]no[/]" if s["running"] else "[red]stopped[/]")
        table.add_row(
            s["name"], str(s["pid"] or "–"), ready, str(s["peers"]), s["fault"], s["api_url"], s["peer_id"]
        )
    console = Console()
    if not console.is_terminal:  # pipes get the whole table, not one cut at 80 columns
        console = Console(width=200)
    console.print(table)


@testnet_app.command("down")
def down(
    dir: DirOption = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds before SIGKILL.")] = 20.0,
) -> None:
    """Stop exactly the daemons `up` started (pid files): SIGTERM, then SIGKILL after --timeout."""
    from node.testnet import TestnetError

    quiet_library_logs()
    tn = _testnet(dir)
    try:
        results = tn.down(timeout=timeout)
    except TestnetError as exc:
        raise fail(str(exc)) from None
    if not results:
        typer.echo(f"no testnet in {tn.root}")
    for r in results:
        typer.echo(f"{r['name']}: {r['how']}" + (f" (pid {r['pid']})" if r["pid"] else ""))


def _explain_failure(tn: Testnet, request_id: str) -> None:
    """What each node's own inference did: the first thing to look at when no consensus."""
    import httpx

    for node in tn.nodes():
        try:
            view = httpx.get(f"{node.api_url}/v1/requests/{request_id}", timeout=5).json()
            own = view.get("own_inference") or {}
            line = f"{node.name}: own inference {own.get('state', 'none')}"
            if own.get("reason"):
                line += f" ({own['reason']})"
        except (httpx.HTTPError, ValueError) as exc:
            line = f"{node.name}: unreachable ({exc})"
        typer.secho(line, err=True, fg=typer.colors.YELLOW)
    typer.secho(f"node logs: {tn.root}/node-*/daemon.log", err=True, dim=True)


@testnet_app.command("demo")
def demo(
    dir: DirOption = None,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="What to ask the network.")] = DEMO_PROMPT,
    max_tokens: Annotated[int, typer.Option("--max-tokens")] = 32,
    max_time: Annotated[float, typer.Option("--max-time", help="Request deadline in seconds.")] = 180.0,
    commit_window: Annotated[
        float,
        typer.Option(
            "--commit-window",
            help="Seconds the nodes have to commit; three local nodes answer one question in a few.",
        ),
    ] = 15.0,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the nodes.")] = 600.0,
) -> None:
    """Up 3 nodes, submit one signed request, print the answer and certificate path, down."""
    quiet_library_logs()
    from node.cli.progress import watch_request
    from node.client import (
        ClientError,
        NodeClient,
        build_request,
        load_or_create_client_key,
        sign_request,
        write_certificate,
    )
    from node.testnet import TestnetError

    t0 = time.monotonic()
    tn = _testnet(dir)
    view: dict[str, Any] | None = None
    cert_path: Path | None = None
    try:
        _bring_up(tn, 3, None, None, timeout)
        t_up = time.monotonic() - t0
        url = tn.nodes()[0].api_url
        ident = load_or_create_client_key()
        frame = sign_request(
            build_request(
                prompt, quorum=3, max_time_s=max_time, max_tokens=max_tokens, commit_window_s=commit_window
            ),
            ident,
        )
        with NodeClient(url) as client:
            request_id = client.submit(frame)
        typer.secho(f"asked the network: {prompt!r}\nrequest {request_id} via {url}", err=True, dim=True)
        view = watch_request(url, request_id, timeout=max_time + 120.0)
        if view.get("state") == "succeeded" and view.get("certificate"):
            cert_path = write_certificate(view, tn.root / "certificates" / f"{request_id}.json")
        else:
            _explain_failure(tn, request_id)
    except (TestnetError, ClientError, TimeoutError, LookupError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None
    finally:
        typer.secho("stopping the testnet…", err=True, dim=True)
        tn.down()
    nodes = {n.node_id: n.name for n in tn.nodes()}
    typer.echo("")
    if view.get("state") == "succeeded":
        typer.secho("consensus answer:", bold=True)
        typer.echo(view.get("answer") or "")
    else:
        typer.secho(f"no consensus: {view.get('state')} ({view.get('reason')})", fg=typer.colors.RED)
    members = view.get("members") or []
    typer.echo(f"\nwinning cluster: {len(members)} of 3 nodes")
    for m in members:
        typer.echo(f"  - {nodes.get(m.get('node_id'), '?')}  {m.get('node_id')}")
    typer.echo(f"request id:  {view.get('request_id')}")
    if cert_path is not None:
        typer.echo(f"certificate: {cert_path}  (check it: rakis verify {cert_path})")
    typer.echo(f"wall time:   {time.monotonic() - t0:.1f} s (nodes ready after {t_up:.1f} s)")
    if view.get("state") != "succeeded":
        raise typer.Exit(1)


@testnet_app.command("partition")
def partition(
    node: Annotated[str, typer.Argument(help="Node name, e.g. node-1.")],
    dir: DirOption = None,
) -> None:
    """Cut one node of a --netns testnet off the network (it keeps running)."""
    from node.netns import NetnsError
    from node.testnet import TestnetError

    try:
        entry = _testnet(dir).partition(node)
    except (TestnetError, NetnsError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"{entry.name} ({entry.host}) is cut off; undo with: rakis testnet heal {entry.name}")


@testnet_app.command("heal")
def heal(
    node: Annotated[str, typer.Argument(help="Node name, e.g. node-1.")],
    dir: DirOption = None,
) -> None:
    """Reconnect a node that partition cut off."""
    from node.netns import NetnsError
    from node.testnet import TestnetError

    try:
        entry = _testnet(dir).heal(node)
    except (TestnetError, NetnsError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"{entry.name} ({entry.host}) is reconnected")
