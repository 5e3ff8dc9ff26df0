"""Real `rakis node start` daemons as subprocesses on 127.0.0.1, driven over HTTP.

Shared by `tests/e2e` (real default models) and `tests/faults` (tiny random Llama): both
start, signal, restart and stop whole daemon processes, and differ only in the
options collected in `DaemonOptions`. Each daemon gets its own data dir, an ephemeral
API port and libp2p port, one torch thread, and an environment cleaned of the
caller's `RAKIS_*` settings so that a developer's shell cannot change a test.

No daemon outlives the test process: `stop()` escalates SIGTERM to SIGKILL, every
started daemon is stopped at interpreter exit, and on Linux the child is asked to
receive SIGKILL when the process that started it dies (a test run killed by a
timeout or by hand leaves nothing behind).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from signal import SIGCONT, SIGINT, SIGKILL, SIGTERM
from typing import Any

import httpx

from node.client import build_request, sign_request
from node.identity import Identity

RAKIS = str(Path(sys.executable).with_name("rakis"))
DEFAULT_MODEL = "smollm2-135m-instruct"
EMBEDDING = "all-minilm-l6-v2"

# Signals after which the process is gone and must be reaped.
_TERMINATING = (SIGKILL, SIGTERM, SIGINT)


@dataclasses.dataclass(frozen=True)
class DaemonOptions:
    """What a test package wants of all its daemons (per daemon: `Daemon`'s arguments).

    `model_dir` set: serve that local directory under the name `model` (`--model
    model=1` and `RAKIS_MODEL_PATHS`); unset: the daemon's own default models.
    `keep_p2p_port`: a restarted daemon listens on the libp2p port of its first run, so
    peers whose bootstrap lists name it can redial it.
    """

    model: str = DEFAULT_MODEL
    model_dir: Path | None = None
    reveal_window_s: float = 15
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    extra_args: tuple[str, ...] = ()
    ready_timeout_s: float = 180
    final_timeout_s: float = 120
    keep_p2p_port: bool = False

    def environ(self, **extra: str) -> dict[str, str]:
        """The daemon's environment: this process's, minus `RAKIS_*`, plus test settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAKIS_")}
        env.update(
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            OMP_NUM_THREADS="1",
            RAKIS_TORCH_THREADS="1",
            RAKIS_REVEAL_GRACE_S="0.5",
            RAKIS_REVEAL_WINDOW_S=str(self.reveal_window_s),
            # No identity puzzle unless a test asks (attacker keys in tests/faults have none).
            RAKIS_PUZZLE_DIFFICULTY="0",
        )
        if self.model_dir is not None:
            env["RAKIS_MODEL_PATHS"] = json.dumps({self.model: str(self.model_dir)})
        env.update(self.env)
        env.update(extra)
        return env


def make_frame(
    prompt: str,
    *,
    model: str,
    quorum: int,
    max_time_ms: int = 60_000,
    sec_distance: float = 0.15,
    sec_percentage: float = 1.0,
    max_tokens: int = 16,
    client: Identity | None = None,
    commit_window_ms: int | None = None,
) -> bytes:
    """A client-signed request frame, built by the real client code."""
    body = build_request(
        prompt,
        models=[model],
        quorum=quorum,
        max_time_s=max_time_ms / 1000,
        sec_distance=sec_distance,
        sec_percentage=sec_percentage,
        max_tokens=max_tokens,
        embedding_model=EMBEDDING,
        commit_window_s=None if commit_window_ms is None else commit_window_ms / 1000,
    )
    return sign_request(body, client or Identity.generate())


# Daemons started and not yet stopped, for the exit handler below.
_LIVE: set[Daemon] = set()


def _prctl() -> Any:
    """libc's prctl, looked up here: the forked child must not dlopen (it may deadlock)."""
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()
_PR_SET_PDEATHSIG = 1


def _kill_with_parent() -> None:
    """In the child before exec: the kernel sends SIGKILL when the test process dies.

    Strictly, when the *thread* that started it ends: start daemons from the main thread
    (as pytest fixtures and tests do), not from a short-lived worker thread."""
    _PRCTL(_PR_SET_PDEATHSIG, int(SIGKILL))


class Daemon:
    """One `rakis node start` subprocess, restartable on the same data dir."""

    def __init__(
        self,
        data_dir: Path,
        options: DaemonOptions,
        *,
        fault: str = "honest",
        bootstrap: list[str] | None = None,
        env: Mapping[str, str] | None = None,
        extra_args: tuple[str, ...] | list[str] = (),
    ) -> None:
        self.data_dir = data_dir
        self.options = options
        self.fault = fault
        self.bootstrap = list(bootstrap or [])
        self.extra_env = dict(env or {})
        self.extra_args = tuple(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self.p2p_port: int | None = None
        self._log: Any = None
        data_dir.mkdir(parents=True, exist_ok=True)

    # -- process -----------------------------------------------------------------

    def args(self) -> list[str]:
        """The full command line (also for tests that run the daemon themselves)."""
        port = self.p2p_port if self.options.keep_p2p_port and self.p2p_port else 0
        out = [
            RAKIS,
            "--log-json",
            "node",
            "start",
            "--data-dir",
            str(self.data_dir),
            "--api",
            "127.0.0.1:0",
            "--listen",
            f"/ip4/127.0.0.1/tcp/{port}",
            "--no-mdns",
            "--torch-threads",
            "1",
        ]
        if self.options.model_dir is not None:
            out += ["--model", f"{self.options.model}=1"]
        out += ["--fault", self.fault]
        for b in self.bootstrap:
            out += ["--bootstrap", b]
        out += [*self.options.extra_args, *self.extra_args]
        return out

    def env(self) -> dict[str, str]:
        """The environment `start()` gives the daemon."""
        return self.options.environ(**self.extra_env)

    @property
    def log_path(self) -> Path:
        return self.data_dir / "daemon.log"

    def start(self) -> Daemon:
        """Start (or restart) the daemon; returns at once, see `wait_ready()`."""
        if self.running:
            raise RuntimeError(f"daemon in {self.data_dir} is already running (pid {self.proc.pid})")
        (self.data_dir / "node.json").unlink(missing_ok=True)
        self._close_log()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop() or the next start()
        self.info = {}
        self.proc = subprocess.Popen(
            self.args(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env(),
            preexec_fn=_kill_with_parent if _PRCTL is not None else None,
        )
        _LIVE.add(self)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float | None = None) -> Daemon:
        """Until the daemon's own `node.json` names its pid and `/readyz` answers 200."""
        assert self.proc is not None, "start() first"
        timeout = self.options.ready_timeout_s if timeout is None else timeout
        end = time.monotonic() + timeout
        path = self.data_dir / "node.json"
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"daemon in {self.data_dir} exited with {self.proc.returncode} before it was ready;"
                    f" log tail:\n{self.tail()}"
                )
            with contextlib.suppress(OSError, ValueError, KeyError):
                info = json.loads(path.read_text())
                if info.get("pid") == self.proc.pid and self._ok(info["api_url"] + "/readyz"):
                    self.info = info
                    self.p2p_port = int(self.addr.split("/tcp/")[1].split("/")[0])
                    return self
            time.sleep(0.3)
        raise TimeoutError(f"daemon in {self.data_dir} not ready after {timeout}s; log tail:\n{self.tail()}")

    @staticmethod
    def _ok(url: str) -> bool:
        try:
            return httpx.get(url, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def _log_lines(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def tail(self, n: int = 40) -> str:
        """The last lines of the daemon's log (all runs on this data dir)."""
        return "\n".join(self._log_lines()[-n:])

    def recent_failures(self, limit: int = 20) -> str:
        """This node's recent requests that did not succeed, one outcome summary each
        (for assertion messages about a batch of requests)."""
        try:
            views = self.get(f"/v1/requests?limit={limit}").json()["requests"]
        except Exception as e:  # noqa: BLE001 - a message helper never raises
            return f"requests unavailable: {e}"
        failed = [v for v in views if v.get("state") != "succeeded"]
        lines = [f"{v.get('request_id', '')[:12]}: {outcome_summary(v)}" for v in failed]
        return "\n".join(lines + [self.penalty_log()]) if failed else "none"

    def penalty_log(self) -> str:
        """The daemon's log lines about senders and peers it penalized or banned: a node
        that throttled an honest peer drops its commits, which looks like a slow peer."""
        marks = ("gossip_sender_penalized", "gossip_peer_banned")
        return "\n".join([line for line in self._log_lines() if any(m in line for m in marks)][-10:])

    def log_lines_about(self, needle: str, n: int = 60) -> str:
        """The last `n` lines of the daemon's log that mention `needle` (a request id)."""
        return "\n".join([line for line in self._log_lines() if needle in line][-n:])

    def signal(self, sig: int) -> None:
        """Send `sig` (e.g. SIGSTOP/SIGCONT) if the daemon is running; never waits."""
        if self.running:
            self.proc.send_signal(sig)

    def kill(self, sig: int = SIGKILL) -> None:
        """Send `sig` (default SIGKILL) to a possibly frozen daemon; reap it if it ends it."""
        if not self.running:
            return
        if sig != SIGCONT:
            self.proc.send_signal(SIGCONT)  # a SIGSTOPped process must handle SIGTERM
        self.proc.send_signal(sig)
        if sig in _TERMINATING:
            self._reap()

    def stop(self) -> None:
        """Graceful stop (SIGTERM, SIGKILL after 30 s); safe to call twice or unstarted."""
        if self.running:
            self.kill(SIGTERM)
        self._close_log()
        _LIVE.discard(self)

    def _reap(self) -> None:
        assert self.proc is not None
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- HTTP --------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.info["api_url"]

    @property
    def node_id(self) -> str:
        return self.info["node_id"]

    @property
    def addr(self) -> str:
        return self.info["listen_addrs"][0]

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kw)

    def request(self, rid: str) -> dict[str, Any] | None:
        """This node's view of a request; None if unknown or the node does not answer."""
        try:
            r = self.get(f"/v1/requests/{rid}")
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def post_request(self, frame: bytes) -> httpx.Response:
        """POST a signed frame; the raw response, for tests that expect a refusal."""
        return httpx.post(
            self.url + "/v1/requests",
            content=frame,
            headers={"content-type": "application/octet-stream"},
            timeout=30,
        )

    def submit(self, frame: bytes) -> str:
        """POST a signed frame that must be accepted; its request id."""
        r = self.post_request(frame)
        assert r.status_code == 200, r.text
        return r.json()["request_id"]

    def peer_count(self) -> int:
        try:
            return len(self.get("/v1/peers").json()["peers"])
        except Exception:  # noqa: BLE001 - down, frozen or restarting: no peers seen
            return 0

    def wait_for(
        self, pred: Callable[[], Any], timeout: float = 60, what: str = "condition", step: float = 0.2
    ) -> Any:
        """Poll `pred` until truthy; its value. The timeout error carries the log tail."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = pred()
            if value:
                return value
            time.sleep(step)
        raise TimeoutError(f"{what} not reached after {timeout}s on {self.data_dir.name}\n{self.tail()}")

    def wait_final(self, rid: str, timeout: float | None = None) -> dict[str, Any]:
        """Until this node's view of `rid` leaves `pending`; that view."""
        timeout = self.options.final_timeout_s if timeout is None else timeout
        last: list[dict[str, Any] | None] = [None]

        def final() -> dict[str, Any] | None:
            v = last[0] = self.request(rid)
            return v if v is not None and v["state"] != "pending" else None

        try:
            return self.wait_for(final, timeout, f"request {rid[:12]} final")
        except TimeoutError as e:
            raise TimeoutError(
                f"{e}\nlast view on {self.data_dir.name}: {outcome_summary(last[0])}"
            ) from None

    def wait_succeeded(self, rid: str, timeout: float | None = None) -> dict[str, Any]:
        """Until this node's view of `rid` is final; that view, which must have succeeded.
        A failure names its reason, the commits and the reveals with their verdicts, the
        log lines about the request, and whom this node penalized."""
        view = self.wait_final(rid, timeout)
        assert view["state"] == "succeeded", (
            f"request {rid[:12]} {view['state']} on {self.data_dir.name}: "
            f"{outcome_summary(view)}\n{self.log_lines_about(rid)}\n{self.penalty_log()}"
        )
        return view


def outcome_summary(view: dict[str, Any] | None) -> str:
    """The facts that explain a request's outcome on one node, for assertion messages:
    its state and reason, who committed, and each reveal's status, reason and verdict."""
    if view is None:
        return "no view"
    brief = {
        "state": view.get("state"),
        "reason": view.get("reason"),
        "stage": view.get("stage"),
        "own_inference": view.get("own_inference"),
        "commit_close_ms": view.get("commit_close_ms"),
        "created_at": view.get("created_at"),
        "finished_at": view.get("finished_at"),
        "commits": [c.get("node_id", "")[:12] for c in view.get("commits") or []],
        "reveals": [
            {
                "node": r.get("node_id", "")[:12],
                "status": r.get("status"),
                "reason": r.get("reason"),
                "recheck": r.get("recheck"),
                "output": (r.get("output") or "")[:80],
            }
            for r in view.get("reveals") or []
        ],
        "members": [str(m)[:12] for m in view.get("members") or []],
    }
    return json.dumps(brief)[:4000]


def stop_all(daemons: list[Daemon]) -> None:
    """Stop every daemon, even if stopping one of them fails."""
    errors = []
    for d in daemons:
        try:
            d.stop()
        except Exception as e:  # noqa: BLE001 - keep stopping the others
            errors.append(e)
    if errors:
        raise errors[0]


def start_network(
    root: Path, options: DaemonOptions, names: tuple[str, ...] = ("a", "b", "c")
) -> list[Daemon]:
    """Start a hub (the first name) and, once it is ready, the others bootstrapped to it;
    all ready on return. If any fails to come up, the ones started are stopped."""
    started: list[Daemon] = []
    try:
        hub = Daemon(root / names[0], options).start()
        started.append(hub)
        hub.wait_ready()
        started += [Daemon(root / n, options, bootstrap=[hub.addr]).start() for n in names[1:]]
        for d in started[1:]:
            d.wait_ready()
    except BaseException:
        stop_all(started)
        raise
    return started


@atexit.register
def _stop_leftovers() -> None:
    """Last resort for a daemon whose test neither stopped it nor ran its teardown."""
    for d in list(_LIVE):
        with contextlib.suppress(Exception):
            d.stop()
