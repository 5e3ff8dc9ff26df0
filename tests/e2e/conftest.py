"""Real daemons as subprocesses on 127.0.0.1 (`rakis node start`), driven over HTTP.

Each daemon gets its own data dir, an ephemeral API port and libp2p port, one torch
thread, and the real default models. `Daemon` reads the `node.json` the daemon writes
when ready. Every process started here is stopped at teardown (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from node.client import build_request, sign_request
from node.identity import Identity

RAKIS = str(Path(sys.executable).with_name("rakis"))
MODEL = "smollm2-135m-instruct"
EMBEDDING = "all-minilm-l6-v2"


def daemon_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        RAKIS_TORCH_THREADS="1",
        OMP_NUM_THREADS="1",
        RAKIS_REVEAL_GRACE_S="0.5",
        RAKIS_REVEAL_WINDOW_S="15",
    )
    return env


class Daemon:
    def __init__(self, data_dir: Path, *, fault: str = "honest", bootstrap: list[str] | None = None) -> None:
        self.data_dir = data_dir
        self.fault = fault
        self.bootstrap = list(bootstrap or [])
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}
        data_dir.mkdir(parents=True, exist_ok=True)

    def start(self) -> Daemon:
        (self.data_dir / "node.json").unlink(missing_ok=True)
        args = [
            RAKIS,
            "--log-json",
            "node",
            "start",
            "--data-dir",
            str(self.data_dir),
            "--api",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
            "--torch-threads",
            "1",
            "--fault",
            self.fault,
        ]
        for b in self.bootstrap:
            args += ["--bootstrap", b]
        if getattr(self, "log", None) is not None:
            self.log.close()
        self.log = open(self.data_dir / "daemon.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=daemon_env())
        return self

    def wait_ready(self, timeout: float = 180) -> Daemon:
        assert self.proc is not None
        end = time.monotonic() + timeout
        path = self.data_dir / "node.json"
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}; log:\n{self.tail()}")
            if path.exists():
                try:
                    self.info = json.loads(path.read_text())
                except json.JSONDecodeError:
                    time.sleep(0.2)
                    continue
                if self.info.get("pid") == self.proc.pid:
                    r = httpx.get(self.url + "/readyz", timeout=5)
                    if r.status_code == 200:
                        return self
            time.sleep(0.3)
        raise TimeoutError(f"daemon not ready after {timeout}s; log:\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join((self.data_dir / "daemon.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    @property
    def url(self) -> str:
        return self.info["api_url"]

    @property
    def node_id(self) -> str:
        return self.info["node_id"]

    @property
    def addr(self) -> str:
        return self.info["listen_addrs"][0]

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kw)

    def request(self, rid: str) -> dict | None:
        r = self.get(f"/v1/requests/{rid}")
        return r.json() if r.status_code == 200 else None

    def submit(self, frame: bytes) -> httpx.Response:
        return httpx.post(
            self.url + "/v1/requests",
            content=frame,
            headers={"content-type": "application/octet-stream"},
            timeout=30,
        )

    def wait_final(self, rid: str, timeout: float = 120) -> dict:
        end = time.monotonic() + timeout
        last = None
        while time.monotonic() < end:
            last = self.request(rid)
            if last is not None and last["state"] != "pending":
                return last
            time.sleep(0.5)
        raise TimeoutError(f"request {rid[:12]} not final after {timeout}s: {last}\n{self.tail()}")

    def wait_for(self, predicate, timeout: float = 60, what: str = "condition"):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        raise TimeoutError(f"{what} not reached after {timeout}s\n{self.tail()}")

    def peer_count(self) -> int:
        try:
            return len(self.get("/v1/peers").json()["peers"])
        except Exception:
            return 0

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.kill(signal.SIGTERM)
        self.log.close()


def make_frame(
    *,
    prompt: str,
    quorum: int,
    max_time_ms: int = 60_000,
    sec_distance: float = 0.15,
    sec_percentage: float = 1.0,
    max_tokens: int = 16,
    client: Identity | None = None,
) -> bytes:
    """A client-signed request frame, built by the real client code."""
    body = build_request(
        prompt,
        models=[MODEL],
        quorum=quorum,
        max_time_s=max_time_ms / 1000,
        sec_distance=sec_distance,
        sec_percentage=sec_percentage,
        max_tokens=max_tokens,
        embedding_model=EMBEDDING,
    )
    return sign_request(body, client or Identity.generate())


@pytest.fixture(scope="module")
def testnet(tmp_path_factory):
    """Three honest daemons: `a` is the hub the others bootstrap to."""
    root = tmp_path_factory.mktemp("testnet")
    started: list[Daemon] = []
    try:
        a = Daemon(root / "a").start()
        started.append(a)
        a.wait_ready()
        others = [Daemon(root / n, bootstrap=[a.addr]).start() for n in ("b", "c")]
        started += others
        for d in others:
            d.wait_ready()
        nodes = {"a": a, "b": others[0], "c": others[1], "root": root}
        a.wait_for(lambda: a.peer_count() >= 2, timeout=60, what="a sees 2 peers")
        for d in others:
            d.wait_for(lambda d=d: d.peer_count() >= 1, timeout=60, what="peer seen")
        yield nodes
    finally:
        for d in started:
            d.stop()
