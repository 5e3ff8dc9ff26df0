"""Real `rakis node start` daemons as subprocesses for fault tests, serving the tiny random
Llama (fast to load) and the real MiniLM, each with its own data dir and ports on
127.0.0.1 and one torch thread. Every process started here is stopped at teardown."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from node.client import build_request, sign_request
from node.identity import Identity

RAKIS = str(Path(sys.executable).with_name("rakis"))
TINY_MODEL = "tiny-llama"
EMBEDDING = "all-minilm-l6-v2"


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_models import make_tiny_llama_dir

    return make_tiny_llama_dir(tmp_path_factory.mktemp("faults-tiny-llama"), seed=3)


def daemon_env(tiny_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAKIS_")}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        RAKIS_TORCH_THREADS="1",
        RAKIS_MODEL_PATHS=json.dumps({TINY_MODEL: str(tiny_dir)}),
        RAKIS_REVEAL_GRACE_S="0.5",
        RAKIS_REVEAL_WINDOW_S="90",
    )
    env.update(extra)
    return env


class Daemon:
    """One `rakis node start` subprocess (restartable on the same data dir)."""

    def __init__(
        self,
        data_dir: Path,
        tiny_dir: Path,
        *,
        bootstrap: list[str] | None = None,
        env: dict[str, str] | None = None,
        fault: str = "honest",
    ) -> None:
        self.data_dir = data_dir
        self.tiny_dir = tiny_dir
        self.bootstrap = list(bootstrap or [])
        self.extra_env = dict(env or {})
        self.fault = fault
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self.p2p_port: int | None = None
        data_dir.mkdir(parents=True, exist_ok=True)

    def args(self) -> list[str]:
        listen = f"/ip4/127.0.0.1/tcp/{self.p2p_port or 0}"
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
            listen,
            "--no-mdns",
            "--torch-threads",
            "1",
            "--model",
            f"{TINY_MODEL}=1",
            "--fault",
            self.fault,
        ]
        for b in self.bootstrap:
            out += ["--bootstrap", b]
        return out

    def start(self) -> Daemon:
        (self.data_dir / "node.json").unlink(missing_ok=True)
        log = open(self.data_dir / "daemon.log", "ab")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.proc = subprocess.Popen(
            self.args(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=daemon_env(self.tiny_dir, **self.extra_env),
        )
        return self

    def wait_ready(self, timeout: float = 240) -> Daemon:
        assert self.proc is not None
        end = time.monotonic() + timeout
        path = self.data_dir / "node.json"
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError, json.JSONDecodeError):
                info = json.loads(path.read_text())
                if info.get("pid") == self.proc.pid and self._ok("/readyz", info["api_url"]):
                    self.info = info
                    # Keep the same libp2p port across restarts: peers redial it.
                    self.p2p_port = int(info["listen_addrs"][0].split("/tcp/")[1].split("/")[0])
                    return self
            time.sleep(0.3)
        raise TimeoutError(f"daemon not ready after {timeout}s:\n{self.tail()}")

    @staticmethod
    def _ok(path: str, base: str) -> bool:
        try:
            return httpx.get(base + path, timeout=3).status_code == 200
        except httpx.HTTPError:
            return False

    def tail(self, n: int = 30) -> str:
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

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10)

    def request(self, rid: str) -> dict[str, Any] | None:
        try:
            r = self.get(f"/v1/requests/{rid}")
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def submit(self, frame: bytes) -> str:
        r = httpx.post(
            self.url + "/v1/requests",
            content=frame,
            headers={"content-type": "application/octet-stream"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        return r.json()["request_id"]

    def peer_count(self) -> int:
        try:
            return len(self.get("/v1/peers").json()["peers"])
        except Exception:  # noqa: BLE001
            return 0

    def wait_for(
        self, pred: Callable[[], Any], timeout: float = 60, what: str = "condition", step: float = 0.2
    ) -> Any:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = pred()
            if value:
                return value
            time.sleep(step)
        raise TimeoutError(f"{what} not reached after {timeout}s\n{self.tail()}")

    def wait_final(self, rid: str, timeout: float = 150) -> dict[str, Any]:
        last: list[dict[str, Any] | None] = [None]

        def final() -> dict[str, Any] | None:
            v = last[0] = self.request(rid)
            return v if v is not None and v["state"] != "pending" else None

        try:
            return self.wait_for(final, timeout, f"request {rid[:12]} final")
        except TimeoutError as e:
            v = last[0] or {}
            brief = {k: v.get(k) for k in ("state", "stage", "commits", "reveals", "own_inference")}
            raise TimeoutError(
                f"{e}\nlast view on {self.data_dir.name}: {json.dumps(brief)[:3000]}"
            ) from None

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None) is not None:
            self._log.close()


def make_frame(
    prompt: str,
    *,
    quorum: int,
    max_time_ms: int = 120_000,
    max_tokens: int = 16,
    sec_percentage: float = 1.0,
    client: Identity | None = None,
) -> bytes:
    """A client-signed request frame, built by the real client code."""
    body = build_request(
        prompt,
        models=[TINY_MODEL],
        quorum=quorum,
        max_time_s=max_time_ms / 1000,
        sec_distance=0.15,
        sec_percentage=sec_percentage,
        max_tokens=max_tokens,
        embedding_model=EMBEDDING,
    )
    return sign_request(body, client or Identity.generate())


@pytest.fixture(scope="package")
def trio_net(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Iterator[dict[str, Daemon]]:
    """Three daemons (shared by the fault tests and the load test); b and c bootstrap to a."""
    root = tmp_path_factory.mktemp("faults-net")
    started: list[Daemon] = []
    try:
        a = Daemon(root / "a", tiny_llama_dir).start()
        started.append(a)
        a.wait_ready()
        b = Daemon(root / "b", tiny_llama_dir, bootstrap=[a.addr]).start()
        c = Daemon(root / "c", tiny_llama_dir, bootstrap=[a.addr]).start()
        started += [b, c]
        b.wait_ready()
        c.wait_ready()
        # Everyone redials everyone after a restart: bootstrap lists are fixed now.
        a.bootstrap, b.bootstrap, c.bootstrap = [b.addr, c.addr], [a.addr, c.addr], [a.addr, b.addr]
        for d in (a, b, c):
            d.wait_for(lambda d=d: d.peer_count() >= 2 or d is not a and d.peer_count() >= 1, 60, "peers")
        a.wait_for(lambda: a.peer_count() >= 2, 60, "a sees b and c")
        yield {"a": a, "b": b, "c": c}
    finally:
        for d in started:
            d.stop()
