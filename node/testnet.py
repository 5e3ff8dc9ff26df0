"""A local testnet: N ``rakis node start`` daemons, each in its own data dir, on 127.0.0.1
or (``netns``) each in a network namespace of its own, as separate hosts on one bridge.

Layout of a testnet directory (default ``./.rakis-testnet``, or ``$RAKIS_TESTNET_DIR``)::

    .rakis-testnet/
      testnet.json            which nodes this testnet has (names, ports, ids, threads)
      node-0/                 a node's data dir: node.key, rakis.db, node.json, daemon.log
        daemon.pid            "<pid> <start ticks>": the process *we* started
      certificates/           written by ``rakis testnet demo``

Why the pid file holds the process start time too: ``down`` must stop exactly the
processes ``up`` started, and a pid alone can be reused by an unrelated process after
a crash or reboot. Ports and node keys are chosen before any node starts, so all
nodes start at once (model loading dominates start-up) with every other node as a
bootstrap peer; the gossip layer redials bootstrap peers that are not up yet.

Nodes on one machine share its cores: each gets ``max(1, cores // N)`` torch threads
so N nodes do not oversubscribe the CPU.

Why this module is long: one testnet's whole life (plan, spawn, wait until meshed,
status, stop, and the namespace faults) works on one record file and one set of pid
files; the namespace plumbing itself lives in ``node.netns``.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from node import identity as identity_mod
from node.netns import NetnsError, NetnsTopology
from node.p2p.libp2p_compat import peer_id_from_public_key

TESTNET_FILE = "testnet.json"
PID_FILE = "daemon.pid"
NODE_JSON = "node.json"
LOG_FILE = "daemon.log"
API_KEY_FILE = "api.key"
DEFAULT_DIR_NAME = ".rakis-testnet"
TESTNET_DIR_ENV = "RAKIS_TESTNET_DIR"

__all__ = [
    "NodeEntry",
    "Testnet",
    "TestnetError",
    "default_testnet_dir",
    "threads_per_node",
]


class TestnetError(Exception):
    """A testnet operation failed; the message says what and where to look."""

    __test__ = False  # not a pytest test class


def default_testnet_dir() -> Path:
    """``$RAKIS_TESTNET_DIR``, else ``./.rakis-testnet`` in the current directory."""
    env = os.environ.get(TESTNET_DIR_ENV)
    return Path(env).expanduser() if env else Path.cwd() / DEFAULT_DIR_NAME


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_node(n: int, cores: int | None = None) -> int:
    """Torch threads per node so that n nodes together use the machine's cores once."""
    return max(1, (cores or available_cores()) // max(1, n))


def rakis_command() -> list[str]:
    """How to run the CLI: the ``rakis`` script next to this interpreter, else ``python -c``."""
    script = Path(sys.executable).with_name("rakis")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from node.cli.app import app; app()"]


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (all held open together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# ---- processes -----------------------------------------------------------------------------


def _start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks since boot (/proc), None if unknown/gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after it.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # zombie: it has exited, only its parent has not reaped it
        return None
    return int(fields[19])


def _alive(pid: int, ticks: int | None) -> bool:
    """True when `pid` is still the very process recorded (same start time)."""
    if Path("/proc").is_dir():
        now = _start_ticks(pid)
        return now is not None and (ticks is None or now == ticks)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process: certainly not ours
    return True


@dataclass
class NodeEntry:
    """One node of the testnet as recorded in testnet.json."""

    name: str
    data_dir: str
    api_port: int
    p2p_port: int
    node_id: str
    peer_id: str
    torch_threads: int
    fault: str = "honest"
    host: str = "127.0.0.1"  # the node's own address (its namespace's, with --netns)
    netns: str | None = None  # the network namespace it runs in, if any

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def multiaddr(self) -> str:
        return f"/ip4/{self.host}/tcp/{self.p2p_port}/p2p/{self.peer_id}"

    @property
    def dir(self) -> Path:
        return Path(self.data_dir)

    def read_pid(self) -> tuple[int, int | None] | None:
        try:
            parts = (self.dir / PID_FILE).read_text().split()
            return int(parts[0]), (int(parts[1]) if len(parts) > 1 and parts[1] != "-" else None)
        except (OSError, ValueError, IndexError):
            return None

    def running_pid(self) -> int | None:
        """The pid of the daemon we started for this node, if it is still running."""
        rec = self.read_pid()
        return rec[0] if rec is not None and _alive(*rec) else None

    def node_json(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.dir / NODE_JSON).read_text())
        except (OSError, ValueError):
            return None

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = (self.dir / LOG_FILE).read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])


Progress = Callable[[str, str, int | None, str | None], None]


class Testnet:
    """The testnet in one directory: ``up``, ``status``, ``down``."""

    __test__ = False  # not a pytest test class

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or default_testnet_dir()).expanduser().absolute()
        self._procs: dict[str, subprocess.Popen] = {}  # our children, reaped on down
        # How `up` started the nodes, so `restart` starts one the same way.
        self._launch: dict[str, Any] = {"models": None, "env": None, "bootstrap": "all", "relayed": ()}

    # -- records --

    def nodes(self) -> list[NodeEntry]:
        path = self.root / TESTNET_FILE
        try:
            data = json.loads(path.read_text())
            return [NodeEntry(**n) for n in data["nodes"]]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TestnetError(f"{path} is unreadable ({exc}); remove it to start afresh") from None

    def _save(self, nodes: list[NodeEntry]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # The directory is scratch space: keep it out of any git checkout it sits in.
        gi = self.root / ".gitignore"
        if not gi.exists():
            gi.write_text("*\n")
        tmp = self.root / f".{TESTNET_FILE}.tmp"
        tmp.write_text(json.dumps({"nodes": [asdict(n) for n in nodes]}, indent=2) + "\n")
        os.replace(tmp, self.root / TESTNET_FILE)

    def running(self) -> list[NodeEntry]:
        return [n for n in self.nodes() if n.running_pid() is not None]

    # -- up --

    def topology(self) -> NetnsTopology:
        """The namespace names and addresses this directory's testnet uses with --netns."""
        return NetnsTopology.for_directory(self.root)

    def plan(
        self,
        n: int,
        *,
        torch_threads: int | None = None,
        faults: dict[int, str] | None = None,
        netns: bool = False,
    ) -> list[NodeEntry]:
        """Keys, ports and thread counts for n nodes (keys are kept from an earlier run).

        With ``netns`` every node is a host of its own: its own namespace and address, and
        the usual ports (8000 for the API, 4001 for libp2p) since no two nodes share a stack."""
        if n < 1:
            raise TestnetError(f"a testnet needs at least 1 node, got {n}")
        threads = torch_threads or threads_per_node(n)
        ports = [8000, 4001] * n if netns else _free_ports(2 * n)
        topo = self.topology() if netns else None
        nodes = []
        for i in range(n):
            data_dir = self.root / f"node-{i}"
            try:
                ident = identity_mod.load_or_create(data_dir)
            except identity_mod.IdentityError as exc:
                raise TestnetError(str(exc)) from None
            nodes.append(
                NodeEntry(
                    name=f"node-{i}",
                    data_dir=str(data_dir),
                    api_port=ports[2 * i],
                    p2p_port=ports[2 * i + 1],
                    node_id=ident.node_id,
                    peer_id=str(peer_id_from_public_key(ident.public_key)),
                    torch_threads=threads,
                    fault=(faults or {}).get(i, "honest"),
                    host=topo.address(i) if topo is not None else "127.0.0.1",
                    netns=topo.namespace(i) if topo is not None else None,
                )
            )
        return nodes

    def _command(self, node: NodeEntry, others: list[NodeEntry], models: list[str] | None) -> list[str]:
        inside = ["ip", "netns", "exec", node.netns] if node.netns else []
        args = inside + rakis_command() + [
            "--log-json",
            "node",
            "start",
            "--data-dir",
            node.data_dir,
            "--api",
            f"{node.host}:{node.api_port}",
            "--listen",
            f"/ip4/{node.host}/tcp/{node.p2p_port}",
            "--no-mdns",
            "--torch-threads",
            str(node.torch_threads),
            "--fault",
            node.fault,
        ]
        for other in others:
            args += ["--bootstrap", other.multiaddr]
        for m in models or []:
            args += ["--model", m]
        return args

    def api_key(self) -> str:
        """This testnet's Bearer key for ``/verified/v1`` (made once, kept in its directory):
        namespaced nodes bind beyond loopback, where a node requires one."""
        path = self.root / API_KEY_FILE
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            key = f"testnet-{secrets.token_hex(16)}"
            self.root.mkdir(parents=True, exist_ok=True)
            path.write_text(key + "\n")
            path.chmod(0o600)
            return key

    def _netns_env(self, node: NodeEntry) -> dict[str, str]:
        if node.netns is None or os.environ.get("RAKIS_API_KEYS"):
            return {}
        return {"RAKIS_API_KEYS": json.dumps([self.api_key()])}

    def _env(self, threads: int, extra: dict[str, str] | None) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("RAKIS_DATA_DIR", None)  # every node has its own, given by flag
        env.update(
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            OMP_NUM_THREADS=str(threads),
            MKL_NUM_THREADS=str(threads),
            RAKIS_TORCH_THREADS=str(threads),
        )
        # A local testnet's identities need no costly puzzle (minutes of CPU per node at
        # the network default); every node of the testnet uses the same difficulty.
        env.setdefault("RAKIS_PUZZLE_DIFFICULTY", "12")
        env.update(extra or {})
        return env

    def up(
        self,
        n: int,
        *,
        models: list[str] | None = None,
        torch_threads: int | None = None,
        faults: dict[int, str] | None = None,
        timeout: float = 600.0,
        env: dict[str, str] | None = None,
        progress: Progress | None = None,
        netns: bool = False,
        bootstrap: str = "all",
        relayed: tuple[int, ...] = (),
    ) -> list[NodeEntry]:
        """Start n daemons and wait until every one is ready and sees the others.

        ``bootstrap="all"`` gives each node every other as a bootstrap peer;
        ``bootstrap="first"`` gives each only node-0 (the rest is up to DHT discovery).

        With ``netns`` each daemon runs in a network namespace of its own (see
        ``node.netns``): separate hosts with their own addresses on one bridge.
        ``relayed`` (netns only) names nodes that can reach node-0 and nothing else, as
        behind a NAT: node-0 then serves as a circuit relay, and each of them reserves
        on it, bootstraps from it alone, and is reached by the others through it.
        On any failure (a daemon exits, the timeout passes, Ctrl-C) every daemon this
        call started is stopped again (and the namespaces removed) and TestnetError
        names the node and its log tail.
        """
        if bootstrap not in ("all", "first"):
            raise TestnetError(f"bootstrap must be 'all' or 'first', got {bootstrap!r}")
        relayed = tuple(sorted(set(relayed)))
        if relayed and not netns:
            raise TestnetError("relayed nodes need --netns (on loopback every node reaches every other)")
        if any(not 0 < i < n for i in relayed):
            raise TestnetError(f"relayed nodes must be among node-1..node-{n - 1}, got {list(relayed)}")
        if running := self.running():
            raise TestnetError(
                f"a testnet is already running in {self.root} ({len(running)} node(s)); "
                f"stop it first: rakis testnet down --dir {self.root}"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        nodes = self.plan(n, torch_threads=torch_threads, faults=faults, netns=netns)
        if netns:
            try:
                self.topology().create(n)
                for i in relayed:
                    self.topology().isolate(i, [0])
            except NetnsError as exc:
                raise TestnetError(str(exc)) from None
        self._save(nodes)
        report = progress or (lambda *_: None)
        self._launch = {"models": models, "env": env, "bootstrap": bootstrap, "relayed": relayed}
        try:
            for node in nodes:
                self._spawn(node, self._bootstrap_of(node, nodes), models, env)
                report(node.name, "loading models", self._procs[node.name].pid, None)
            self._wait_ready(nodes, timeout, report)
        except BaseException:
            self.down(nodes=nodes)
            raise
        return nodes

    def _relayed(self, node: NodeEntry, nodes: list[NodeEntry]) -> bool:
        return node.name in {nodes[i].name for i in self._launch.get("relayed", ()) if i < len(nodes)}

    def _relay_env(self, node: NodeEntry, nodes: list[NodeEntry]) -> dict[str, str]:
        """node-0 relays for the relayed nodes; each of those reserves on node-0."""
        if not self._launch.get("relayed"):
            return {}
        if node.name == nodes[0].name:
            return {"RAKIS_RELAY_SERVICE": "true"}
        if self._relayed(node, nodes):
            return {"RAKIS_RELAYS": json.dumps([nodes[0].multiaddr])}
        return {}

    def _bootstrap_of(self, node: NodeEntry, nodes: list[NodeEntry]) -> list[NodeEntry]:
        if self._relayed(node, nodes):
            return [nodes[0]]  # the only node it can reach
        if self._launch.get("relayed"):
            nodes = [o for o in nodes if not self._relayed(o, nodes)]  # not dialable directly
        if self._launch["bootstrap"] == "first":
            return [nodes[0]] if node is not nodes[0] else []
        return [o for o in nodes if o is not node]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send one node's daemon a signal (SIGKILL: a crash; SIGSTOP/SIGCONT: a freeze)."""
        node = self._node(name)
        rec = node.read_pid()
        if rec is not None and _alive(*rec):
            _signal(rec[0], sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self._reap(name, block=True)

    def restart(self, name: str, *, timeout: float = 120.0) -> NodeEntry:
        """Start a stopped node again (same data dir, ports, namespace), as `up` did;
        waits until its API is ready (not until it has peers)."""
        nodes = self.nodes()
        node = self._node(name)
        if node.running_pid() is not None:
            raise TestnetError(f"{name} is still running")
        self._spawn(node, self._bootstrap_of(node, nodes), self._launch["models"], self._launch["env"])
        end = time.monotonic() + timeout
        proc = self._procs[name]
        with httpx.Client(timeout=3.0) as http:
            while time.monotonic() < end:
                if proc.poll() is not None:
                    raise TestnetError(f"{name} exited with code {proc.returncode}:\n{node.log_tail()}")
                info = node.node_json()
                if info is not None and info.get("pid") == proc.pid and _get_ok(http, node, "/readyz"):
                    return node
                time.sleep(0.3)
        raise TestnetError(f"{name} not ready {timeout:.0f} s after restart:\n{node.log_tail()}")

    def _node(self, name: str) -> NodeEntry:
        nodes = self.nodes()
        for node in nodes:
            if node.name == name:
                return node
        raise TestnetError(f"no node named {name!r} here; nodes: {', '.join(n.name for n in nodes) or 'none'}")

    def _spawn(
        self, node: NodeEntry, others: list[NodeEntry], models: list[str] | None, env: dict[str, str] | None
    ) -> None:
        env = {**self._relay_env(node, self.nodes()), **(env or {})}
        (node.dir / NODE_JSON).unlink(missing_ok=True)
        with open(node.dir / LOG_FILE, "ab") as log:
            proc = subprocess.Popen(
                self._command(node, others, models),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(node.torch_threads, {**self._netns_env(node), **(env or {})}),
                cwd=node.dir,
                start_new_session=True,  # keeps running after `rakis testnet up` exits; no Ctrl-C
            )
        self._procs[node.name] = proc
        ticks = _start_ticks(proc.pid)
        (node.dir / PID_FILE).write_text(f"{proc.pid} {ticks if ticks is not None else '-'}\n")

    def _wait_ready(self, nodes: list[NodeEntry], timeout: float, report: Progress) -> None:
        end = time.monotonic() + timeout
        ready: set[str] = set()
        meshed: set[str] = set()
        with httpx.Client(timeout=3.0) as http:
            while len(meshed) < len(nodes):
                if time.monotonic() > end:
                    slow = [n.name for n in nodes if n.name not in meshed]
                    raise TestnetError(
                        f"testnet not ready after {timeout:.0f} s: {', '.join(slow)}; "
                        f"log of {slow[0]}:\n{next(n for n in nodes if n.name == slow[0]).log_tail()}"
                    )
                for node in nodes:
                    if node.name in meshed:
                        continue
                    proc = self._procs[node.name]
                    if proc.poll() is not None:
                        raise TestnetError(
                            f"{node.name} exited with code {proc.returncode} while starting; "
                            f"log {node.dir / LOG_FILE}:\n{node.log_tail()}"
                        )
                    if node.name not in ready:
                        info = node.node_json()
                        if info is None or info.get("pid") != proc.pid or not _get_ok(http, node, "/readyz"):
                            continue
                        ready.add(node.name)
                        report(node.name, "connecting", proc.pid, node.api_url)
                    if _peer_count(http, node) >= len(nodes) - 1:
                        meshed.add(node.name)
                        report(node.name, "ready", proc.pid, node.api_url)
                time.sleep(0.3)

    # -- status --

    def status(self, *, check_ready: bool = True) -> list[dict[str, Any]]:
        """One dict per node: name, api_url, peer_id, node_id, pid (None when stopped),
        running, ready, peers, data_dir, log."""
        out = []
        with httpx.Client(timeout=3.0) as http:
            for node in self.nodes():
                pid = node.running_pid()
                info = node.node_json() or {}
                fresh = pid is not None and info.get("pid") == pid
                ready = bool(check_ready and fresh and _get_ok(http, node, "/readyz"))
                out.append(
                    {
                        "name": node.name,
                        "api_url": node.api_url,
                        "peer_id": node.peer_id,
                        "node_id": node.node_id,
                        "pid": pid,
                        "running": pid is not None,
                        "ready": ready,
                        "peers": _peer_count(http, node) if ready else 0,
                        "multiaddr": node.multiaddr,
                        "torch_threads": node.torch_threads,
                        "fault": node.fault,
                        "data_dir": node.data_dir,
                        "log": str(node.dir / LOG_FILE),
                    }
                )
        return out

    # -- down --

    def down(self, *, timeout: float = 20.0, nodes: list[NodeEntry] | None = None) -> list[dict[str, Any]]:
        """SIGTERM every daemon this testnet started, SIGKILL what is left after `timeout`.

        Only processes whose pid file matches (pid and start time) are signalled.
        Returns one dict per node: name, pid, how ("terminated", "killed", "not running").
        """
        targets = nodes if nodes is not None else self.nodes()
        results: dict[str, dict[str, Any]] = {}
        live: dict[str, tuple[int, int | None]] = {}
        for node in targets:
            rec = node.read_pid()
            if rec is not None and _alive(*rec):
                live[node.name] = rec
                _signal(rec[0], signal.SIGTERM)
                # A stopped process (SIGSTOP in tests) must be resumed to handle SIGTERM.
                _signal(rec[0], signal.SIGCONT)
            results[node.name] = {"name": node.name, "pid": rec[0] if rec else None, "how": "not running"}
        end = time.monotonic() + timeout
        while live and time.monotonic() < end:
            for name, rec in list(live.items()):
                self._reap(name)
                if not _alive(*rec):
                    results[name]["how"] = "terminated"
                    del live[name]
            time.sleep(0.1)
        for name, rec in live.items():
            _signal(rec[0], signal.SIGKILL)
            results[name]["how"] = "killed"
        for name, rec in live.items():
            for _ in range(50):
                self._reap(name)
                if not _alive(*rec):
                    break
                time.sleep(0.1)
        for node in targets:
            self._reap(node.name, block=True)
            (node.dir / PID_FILE).unlink(missing_ok=True)
        if any(node.netns for node in targets):
            self.topology().destroy()
        return [results[n.name] for n in targets]

    # -- faults (namespace testnets only) --

    def partition(self, name: str) -> NodeEntry:
        """Cut one node off the bridge: it keeps running but reaches no one."""
        node, index = self._netns_node(name)
        self.topology().partition(index)
        return node

    def heal(self, name: str) -> NodeEntry:
        node, index = self._netns_node(name)
        self.topology().heal(index)
        return node

    def _netns_node(self, name: str) -> tuple[NodeEntry, int]:
        nodes = self.nodes()
        for index, node in enumerate(nodes):
            if node.name == name:
                if node.netns is None:
                    raise TestnetError(f"{name} is not in a network namespace: start the testnet with --netns")
                return node, index
        raise TestnetError(f"no node named {name!r} here; nodes: {', '.join(n.name for n in nodes) or 'none'}")

    def _reap(self, name: str, block: bool = False) -> None:
        proc = self._procs.get(name)
        if proc is None:
            return
        if block:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                return
        if proc.poll() is not None:
            self._procs.pop(name, None)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _get_ok(http: httpx.Client, node: NodeEntry, path: str) -> bool:
    try:
        return http.get(node.api_url + path).status_code == 200
    except httpx.HTTPError:
        return False


def _peer_count(http: httpx.Client, node: NodeEntry) -> int:
    try:
        return len(http.get(node.api_url + "/v1/peers").json()["peers"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return 0
