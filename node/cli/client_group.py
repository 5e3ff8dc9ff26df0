"""Client commands: ``rakis submit``, ``result``, ``verify``, ``workers``, ``logs``.

Results go to stdout (``--json`` gives one JSON object), progress and errors to stderr.
``submit`` and ``result --wait`` exit 0 only when the request succeeded, so scripts can
branch on the exit code; ``verify`` exits 1 and lists the problems when a certificate
does not hold up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from node.certificates import read_certificate, verify_certificate_data
from node.cli.common import fail
from node.client import (
    FINAL_STATES,
    ClientError,
    NodeClient,
    build_request,
    default_node_url,
    load_or_create_client_key,
    quiet_library_logs,
    result_summary,
    sign_request,
    write_certificate,
)
from node.config import DEFAULT_LLM_MODEL

NodeOption = Annotated[
    str | None,
    typer.Option("--node", "-n", help="Node API URL (default: $RAKIS_NODE, else http://127.0.0.1:8420)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


def _emit_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False))


def _print_result(view: dict[str, Any], cert_path: Path | None = None) -> None:
    """Human summary: the answer, the winning cluster's nodes, the request id."""
    state = view.get("state")
    color = {"succeeded": typer.colors.GREEN, "failed": typer.colors.RED}.get(
        state or "", typer.colors.YELLOW
    )
    if state == "succeeded":
        typer.echo(view.get("answer") or "")
        typer.echo("")
    head = f"state:      {state}"
    if view.get("reason"):
        head += f" ({view['reason']})"
    typer.secho(head, fg=color)
    members = view.get("members") or []
    if members:
        typer.echo(f"cluster:    {len(members)} node(s)")
        for m in members:
            typer.echo(f"  - {m.get('node_id')}  (inference {m.get('inference_id')})")
    typer.echo(f"request id: {view.get('request_id')}")
    if cert_path is not None:
        typer.echo(f"certificate: {cert_path}")


def _follow(url: str, request_id: str, timeout: float, quiet: bool) -> dict[str, Any]:
    from node.cli.progress import watch_request

    try:
        return watch_request(url, request_id, timeout=timeout, quiet=quiet)
    except KeyboardInterrupt:
        raise fail(
            f"stopped following; the request goes on: rakis result {request_id} --node {url} --wait", 130
        ) from None
    except LookupError as exc:
        raise fail(str(exc)) from None
    except TimeoutError as exc:
        raise fail(f"{exc}; follow it later with: rakis result {request_id} --node {url} --wait") from None
    except Exception as exc:  # httpx errors while polling: the node went away
        raise fail(f"lost node {url} while following request {request_id}: {exc}") from None


def submit(
    prompt: Annotated[str, typer.Argument(help="The prompt for the network.")],
    node: NodeOption = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help=f"Accepted model (repeatable; default {DEFAULT_LLM_MODEL})."),
    ] = None,
    quorum: Annotated[int, typer.Option("--quorum", "-q", help="Commits needed.")] = 3,
    max_time: Annotated[float, typer.Option("--max-time", help="Seconds until the request expires.")] = 120.0,
    sec_distance: Annotated[
        float | None,
        typer.Option("--sec-distance", help="Cosine distance for the answer cluster (default 0.5)."),
    ] = None,
    sec_percentage: Annotated[
        float, typer.Option("--sec-percentage", help="Share of the quorum that must agree (0-1].")
    ] = 1.0,
    temperature: Annotated[float, typer.Option("--temperature", "-t")] = 0.0,
    max_tokens: Annotated[int, typer.Option("--max-tokens")] = 64,
    seed: Annotated[int | None, typer.Option("--seed", help="Sampling seed (temperature > 0).")] = None,
    commit_window: Annotated[
        float | None,
        typer.Option(
            "--commit-window",
            help="Seconds nodes have to commit before reveals open (default: max-time/4, 2-60 s); "
            "shorter is faster, too short shuts out slow honest nodes.",
        ),
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option("--key", help="Client key file (default: $RAKIS_CLIENT_KEY, else user config dir)."),
    ] = None,
    cert_out: Annotated[
        Path | None, typer.Option("--cert-out", help="Save the certificate here (JSON) when there is one.")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Give up following after S seconds.")
    ] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Print the request id and return.")] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Submit even when fewer known nodes serve the models than the quorum."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Sign a request with your client key, submit it, follow it live, print the agreed answer.

    Before signing, it asks the node how many known nodes serve the accepted models; a
    quorum larger than that is refused with the fix (``--force`` submits anyway), since
    the request could only fail at its deadline.
    """
    quiet_library_logs()
    from consensus.clustering import DEFAULT_SEC_DISTANCE

    url = node or default_node_url()
    try:
        body = build_request(
            prompt,
            models=model or [DEFAULT_LLM_MODEL],
            quorum=quorum,
            max_time_s=max_time,
            sec_distance=DEFAULT_SEC_DISTANCE if sec_distance is None else sec_distance,
            sec_percentage=sec_percentage,
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
            commit_window_s=commit_window,
        )
        with NodeClient(url) as client:
            _check_quorum_reach(client, body, force=force)
            ident = load_or_create_client_key(key)
            frame = sign_request(body, ident)
            request_id = client.submit(frame)
    except ClientError as exc:
        raise fail(str(exc)) from None
    if no_wait:
        _emit_json({"request_id": request_id, "state": "pending"}) if as_json else typer.echo(request_id)
        return
    if not as_json:
        typer.secho(f"submitted {request_id} to {url}", err=True, dim=True)
    view = _follow(url, request_id, timeout if timeout is not None else max_time + 120.0, quiet=as_json)
    _finish(view, cert_out, as_json)


def _check_quorum_reach(client: NodeClient, body: Any, *, force: bool) -> None:
    """Refuse (or, with ``force``, warn about) a quorum the known network cannot meet."""
    models = list(body.accepted_models)
    embedding = body.security_frame.embedding_model
    quorum = body.security_frame.quorum
    try:
        reach = client.quorum_reach(models, embedding, quorum)
    except ClientError as exc:
        if exc.status is None:
            raise  # the node is unreachable: submitting would fail the same way
        typer.secho(
            f"warning: cannot tell whether quorum {quorum} is reachable ({exc})", err=True, fg="yellow"
        )
        return
    if reach.reachable:
        return
    summary = reach.summary(models, embedding)
    if reach.possible:
        typer.secho(
            f"note: {summary}; {reach.unannounced} peer(s) have not announced their models yet, "
            f"so quorum {quorum} may still be met",
            err=True,
            fg="yellow",
        )
        return
    n = len(reach.serving)
    fix = (
        f"use --quorum {n} (fewer nodes to agree), or join a network with more nodes serving "
        "them (rakis node start --bootstrap /ip4/HOST/tcp/PORT/p2p/PEER_ID, or try a local "
        "one: rakis testnet up)"
        if n
        else "send it to a node that serves them, or start one that does (rakis node start --model NAME)"
    )
    if force:
        typer.secho(
            f"warning: quorum {quorum} cannot be reached: {summary}; submitting anyway (--force)",
            err=True,
            fg="yellow",
        )
        return
    raise fail(f"quorum {quorum} cannot be reached: {summary}. Fix: {fix}; --force submits anyway")


def _finish(view: dict[str, Any], cert_out: Path | None, as_json: bool) -> None:
    cert_path = None
    if cert_out is not None and view.get("certificate"):
        try:
            cert_path = write_certificate(view, cert_out)
        except (ClientError, OSError) as exc:
            raise fail(f"cannot save the certificate: {exc}") from None
    if as_json:
        out = result_summary(view)
        out["certificate_path"] = str(cert_path) if cert_path else None
        _emit_json(out)
    else:
        _print_result(view, cert_path)
    if view.get("state") in FINAL_STATES and view.get("state") != "succeeded":
        raise typer.Exit(1)


def result(
    request_id: Annotated[str, typer.Argument(help="Request id (64 hex chars).")],
    node: NodeOption = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the request until it is final.")] = False,
    full: Annotated[bool, typer.Option("--full", help="With --json: the node's whole view.")] = False,
    cert_out: Annotated[Path | None, typer.Option("--cert-out", help="Save the certificate here.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Show a request's state and result as a node sees it."""
    quiet_library_logs()
    url = node or default_node_url()
    rid = request_id.strip().lower()
    if len(rid) != 64 or any(c not in "0123456789abcdef" for c in rid):
        raise fail(f"request id must be 64 hex characters, got {request_id!r:.80}")
    try:
        with NodeClient(url) as client:
            view = client.get(rid)
    except ClientError as exc:
        raise fail(str(exc)) from None
    if wait and view.get("state") not in FINAL_STATES:
        view = _follow(url, rid, 900.0, quiet=as_json)
    if as_json and full:
        _emit_json(view)
        return
    if view.get("state") not in FINAL_STATES:
        if as_json:
            _emit_json(result_summary(view))
        else:
            _print_result(view)
        return
    _finish(view, cert_out, as_json)


def verify(
    cert_file: Annotated[Path, typer.Argument(help="Certificate JSON (or a saved request view).")],
    hamming_tolerance: Annotated[
        int | None, typer.Option("--hamming-tolerance", min=0, help="Sign-bit mismatch allowed (bits).")
    ] = None,
    recheck: Annotated[
        bool,
        typer.Option(
            "--recheck",
            help="Also re-run each output's model on this machine (proof of inference, offline); "
            "outputs whose model is not here are reported unavailable.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Check a certificate offline: signatures, commit openings, model identity, re-check
    verdicts and the answer rule, embeddings (real model), cluster."""
    quiet_library_logs()
    try:
        data = read_certificate(cert_file)
        from node.cli.progress import loading

        what = "certificate check (embedding model" + (", re-check on the LLM)" if recheck else ")")
        with loading(what, console=_stderr(as_json)):
            ok, problems, facts = verify_certificate_data(
                data, hamming_tolerance=hamming_tolerance, recheck=recheck
            )
    except ClientError as exc:
        raise fail(str(exc)) from None
    if as_json:
        _emit_json({"ok": ok, "problems": problems, **facts})
    elif ok:
        typer.secho("certificate OK", fg=typer.colors.GREEN)
        typer.echo(f"request id: {facts.get('computed_request_id')}")
        typer.echo(f"client:     {facts.get('client')}")
        typer.echo(f"members:    {len(facts.get('members') or [])}")
        typer.echo(f"re-check:   {facts.get('recheck')} (answer rule: {facts.get('answer_rule')})")
        typer.echo(f"answer:     {facts.get('answer')}")
    if not ok:
        typer.secho(f"certificate FAILED ({len(problems)} problem(s)):", err=True, fg=typer.colors.RED)
        for p in problems:
            typer.echo(f"  - {p}", err=True)
        raise typer.Exit(1)


def _stderr(quiet: bool):
    from node.cli.progress import stderr_console

    return stderr_console(quiet)


workers_app = typer.Typer(name="workers", help="A node's engine workers.", no_args_is_help=True)


@workers_app.command("list")
def workers_list(node: NodeOption = None, as_json: JsonOption = False) -> None:
    """List the node's LLM and embedding workers."""
    quiet_library_logs()
    try:
        with NodeClient(node) as client:
            workers = client.workers()
    except ClientError as exc:
        raise fail(str(exc)) from None
    _print_workers(workers, as_json)


@workers_app.command("scale")
def workers_scale(
    model: Annotated[str, typer.Argument(help="Model name, e.g. smollm2-135m-instruct.")],
    n: Annotated[int, typer.Argument(min=0, max=64, help="Desired number of workers.")],
    node: NodeOption = None,
    admin_token: Annotated[
        str | None, typer.Option("--admin-token", envvar="RAKIS_ADMIN_TOKEN", help="The node's admin token.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Set how many workers the node runs for a model (needs the node's admin token)."""
    quiet_library_logs()
    if not admin_token:
        raise fail("scaling needs the node's admin token: --admin-token or $RAKIS_ADMIN_TOKEN")
    try:
        with NodeClient(node, admin_token=admin_token, timeout=300.0) as client:
            workers = client.scale_workers(model, n)
    except ClientError as exc:
        raise fail(str(exc)) from None
    _print_workers(workers, as_json)


def _print_workers(workers: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        _emit_json({"workers": workers})
        return
    if not workers:
        typer.echo("no workers")
    keys = ("kind", "model", "worker_id", "id", "state", "device")
    for w in workers:
        typer.echo("  ".join(f"{k}={w[k]}" for k in keys if k in w) or json.dumps(w))


def logs(
    node: NodeOption = None,
    search: Annotated[
        str | None, typer.Option("--search", "-s", help="Only records containing this.")
    ] = None,
    last: Annotated[int, typer.Option("--last", min=1, max=10_000, help="How many records.")] = 200,
    as_json: JsonOption = False,
) -> None:
    """Recent log records of a node (newest last)."""
    quiet_library_logs()
    try:
        with NodeClient(node) as client:
            records = client.logs(search=search, last_n=last)
    except ClientError as exc:
        raise fail(str(exc)) from None
    if as_json:
        _emit_json({"logs": records})
        return
    for r in records:
        ts = r.get("ts") or r.get("timestamp") or ""
        level = r.get("level", "")
        msg = r.get("message") or r.get("event") or r.get("msg") or ""
        rest = {
            k: v for k, v in r.items() if k not in ("ts", "timestamp", "level", "message", "event", "msg")
        }
        typer.echo(f"{ts} {level:<7} {msg} {json.dumps(rest, ensure_ascii=False) if rest else ''}".rstrip())
