"""Rich progress displays for the CLI: model loading, testnet start-up, request phases.

Everything draws on stderr, so stdout stays clean for results (`--json`). On a
terminal the displays are live; elsewhere (pipes, CI, `quiet=True`) they print only
short final lines, never control codes.

    with loading("smollm2-135m-instruct"):          # spinner, then "loaded in 0.6 s"
        engine.load(...)

    with NodesProgress(["node-0", "node-1"]) as nodes:   # rakis testnet up
        nodes.update("node-0", "ready", url="http://127.0.0.1:8420")

    final = watch_request("http://127.0.0.1:8420", request_id)   # rakis submit
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from node.orchestrator.stages import STAGES

FINAL_STATES = frozenset({"succeeded", "failed", "expired"})
_STATE_STYLE = {"succeeded": "green", "failed": "red", "expired": "yellow", "pending": "cyan"}


def stderr_console(quiet: bool = False) -> Console:
    """The console every CLI display uses: stderr; quiet = nothing at all."""
    return Console(stderr=True, quiet=quiet, highlight=False)


@contextmanager
def loading(what: str, *, console: Console | None = None) -> Iterator[None]:
    """Spinner while `what` loads; a ✓ line with the time taken, or ✗ with the error."""
    console = console or stderr_console()
    t0 = time.perf_counter()
    try:
        with console.status(f"Loading {what}…", spinner="dots"):
            yield
    except BaseException as exc:
        console.print(f"[red]✗[/] {what}: {type(exc).__name__}: {exc}")
        raise
    console.print(f"[green]✓[/] {what} loaded in {time.perf_counter() - t0:.1f} s")


class NodesProgress:
    """A live table of nodes coming up (`rakis testnet up`): status, pid, URL, time."""

    def __init__(self, names: list[str], *, console: Console | None = None) -> None:
        self.console = console or stderr_console()
        self.t0 = time.monotonic()
        self.rows: dict[str, dict[str, Any]] = {
            n: {"status": "starting", "pid": None, "url": None, "since": self.t0} for n in names
        }
        self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)

    def update(self, name: str, status: str, *, pid: int | None = None, url: str | None = None) -> None:
        row = self.rows.setdefault(
            name, {"status": status, "pid": None, "url": None, "since": time.monotonic()}
        )
        if row["status"] != status:
            row["since"] = time.monotonic()
        row["status"] = status
        row["pid"] = pid if pid is not None else row["pid"]
        row["url"] = url if url is not None else row["url"]
        self._live.update(self._render())

    def _render(self) -> Table:
        table = Table(title=f"testnet ({time.monotonic() - self.t0:.0f} s)", expand=False)
        for col in ("node", "status", "pid", "api"):
            table.add_column(col)
        for name, row in self.rows.items():
            style = {"ready": "green", "failed": "red"}.get(row["status"], "cyan")
            table.add_row(name, Text(row["status"], style=style), str(row["pid"] or "–"), row["url"] or "–")
        return table

    def __enter__(self) -> NodesProgress:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.update(self._render())
        self._live.__exit__(*exc)


# The dashboard's rule (``secs`` in dashboard.js): unix seconds reach 1e12 only in the
# year 33658, unix milliseconds passed it in 2001.
_MS_THRESHOLD = 1e12


def as_unix_seconds(ts: object) -> float | None:
    """A unix timestamp in seconds, from a view that may carry seconds or milliseconds.

    Request views carry ``ending_at`` in ms (the wire's unit) while other views carry
    seconds; like the dashboard, tell them apart by size rather than trusting the key.
    """
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        return None
    return ts / 1000.0 if ts > _MS_THRESHOLD else float(ts)


def seconds_left(ending_at: object, now: float | None = None) -> float | None:
    """Seconds from ``now`` (default: the clock) to ``ending_at`` (s or ms), never negative."""
    end = as_unix_seconds(ending_at)
    if end is None:
        return None
    return max(0.0, end - (time.time() if now is None else now))


class PhaseTracker:
    """Shows a network request's phases from its snapshots (`GET /v1/requests/{id}`):
    stage, commits and valid reveals against the quorum, time left to the deadline."""

    def __init__(self, request_id: str, *, console: Console | None = None) -> None:
        self.request_id = request_id
        self.console = console or stderr_console()
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<12}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.stage_task = self.progress.add_task("stage", total=len(STAGES) - 1, note="queued")
        self.commit_task = self.progress.add_task("commits", total=None, note="")
        self.reveal_task = self.progress.add_task("reveals", total=None, note="")
        self.header = Text(f"request {request_id[:16]}…", style="bold")
        self._live = Live(Group(self.header, self.progress), console=self.console, refresh_per_second=8)
        self.last: dict[str, Any] | None = None

    def update(self, req: dict[str, Any]) -> None:
        self.last = req
        frame = req.get("security_frame") or {}
        quorum = frame.get("quorum")
        stage = req.get("stage") or "queued"
        at = STAGES.index(stage) if stage in STAGES else 0
        self.progress.update(self.stage_task, completed=at, note=stage)
        commits = len(req.get("commits") or [])
        reveals = req.get("reveals") or []
        valid = sum(1 for r in reveals if r.get("accepted"))
        self.progress.update(self.commit_task, total=quorum, completed=commits, note="")
        rejected = len(reveals) - valid
        self.progress.update(
            self.reveal_task, total=quorum, completed=valid, note=f"{rejected} rejected" if rejected else ""
        )
        left = ""
        remaining = seconds_left(req.get("ending_at"))
        if remaining is not None and req.get("state") == "pending":
            left = f" · {remaining:.0f} s left"
        self.header.plain = f"request {self.request_id[:16]}… · {req.get('state', 'pending')}{left}"

    def __enter__(self) -> PhaseTracker:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(*exc)
        if self.last is not None and self.last.get("state") in FINAL_STATES:
            if not self.console.is_terminal:
                self.console.print()  # a non-terminal Live leaves the cursor after its last line
            self.print_summary(self.last)

    def print_summary(self, req: dict[str, Any]) -> None:
        state = req.get("state", "?")
        line = Text.assemble(("● ", _STATE_STYLE.get(state, "white")), (state, "bold"))
        if req.get("reason"):
            line.append(f" ({req['reason']})", style="red")
        members = req.get("members") or []
        if members:
            line.append(f" · {len(members)} node(s) in the winning cluster")
        self.console.print(line)


def _sse_snapshots(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """Request snapshots out of `GET /v1/requests/{id}/events` (other events are hints)."""
    for line in response.iter_lines():
        if not line.startswith("data: "):
            continue
        try:
            event = json.loads(line[6:])
        except ValueError:
            continue
        if event.get("type") == "snapshot" and isinstance(event.get("request"), dict):
            yield event["request"]
        else:
            yield {}  # something happened: caller may refresh


def watch_request(
    node_url: str,
    request_id: str,
    *,
    timeout: float = 900.0,
    console: Console | None = None,
    quiet: bool = False,
    client: httpx.Client | None = None,
) -> dict[str, Any]:
    """Follow a request on a node until it is final and return its final dict.

    Uses the node's SSE stream and refreshes the snapshot on every event; when the
    stream breaks it falls back to polling once a second. Raises TimeoutError after
    `timeout` seconds without a final state.
    """
    console = console or stderr_console(quiet)
    own = client is None
    http = client or httpx.Client(base_url=node_url.rstrip("/"), timeout=httpx.Timeout(30.0, read=60.0))
    deadline = time.monotonic() + timeout
    url = f"/v1/requests/{request_id}"
    try:
        with PhaseTracker(request_id, console=console) as tracker:
            current: dict[str, Any] | None = None
            while time.monotonic() < deadline:
                try:
                    with http.stream("GET", f"{url}/events") as r:
                        if r.status_code == 404:
                            raise LookupError(f"node {node_url} does not know request {request_id}")
                        r.raise_for_status()
                        for snap in _sse_snapshots(r):
                            current = snap or http.get(url).json()
                            tracker.update(current)
                            if current.get("state") in FINAL_STATES:
                                return current
                            if time.monotonic() >= deadline:
                                break
                except httpx.HTTPError:
                    pass  # stream broke: poll below, then try the stream again
                resp = http.get(url)
                if resp.status_code == 200:
                    current = resp.json()
                    tracker.update(current)
                    if current.get("state") in FINAL_STATES:
                        return current
                time.sleep(1.0)
            raise TimeoutError(f"request {request_id} not final after {timeout:.0f} s")
    finally:
        if own:
            http.close()
