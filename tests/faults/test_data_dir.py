"""A read-only or full data directory: `rakis node start` stops at once with a clear error
naming the problem, and the data already there is intact afterwards.

As root (CI containers) the directory is a real tmpfs mount — remounted read-only, or
too small; otherwise permissions (read-only) and RLIMIT_FSIZE (full) stand in."""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from node import identity
from node.store import Store
from tests.daemon_helpers import Daemon

pytestmark = pytest.mark.timeout(300)


def _can_mount() -> bool:
    if os.geteuid() != 0:
        return False
    probe = Path("/tmp") / f"rakis-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        ok = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True
            ).returncode
            == 0
        )
        if ok:
            subprocess.run(["umount", str(probe)], check=True)
        return ok
    finally:
        probe.rmdir()


MOUNT = _can_mount()


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _digest(data: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(data.iterdir()) if p.is_file()}


def _prepare(data: Path) -> str:
    """A node's data dir as a previous run leaves it: key and a migrated database."""
    ident = identity.load_or_create(data)
    Store(data).close()
    return ident.node_id


def _start_and_fail(daemon: Daemon, preexec=None) -> str:
    proc = subprocess.run(
        daemon.args(),
        capture_output=True,
        text=True,
        timeout=180,
        env=daemon.env(),
        preexec_fn=preexec,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode not in (0, None), out[-3000:]
    assert proc.returncode > 0, f"killed by signal {-proc.returncode}:\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    assert "error" in out.lower(), out[-3000:]
    return out


def _integrity_ok(data: Path) -> None:
    db = sqlite3.connect(f"file:{data / 'rakis.sqlite3'}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()


def test_read_only_data_dir_is_a_clear_error_at_start(tmp_path, daemon_options):
    data = tmp_path / "ro"
    if MOUNT:
        with tmpfs(data, "8m"):
            _prepare(data)
            before = _digest(data)
            subprocess.run(["mount", "-o", "remount,ro", str(data)], check=True)
            out = _start_and_fail(Daemon(data, daemon_options))
            after = _digest(data)
            subprocess.run(["mount", "-o", "remount,rw", str(data)], check=True)
            _integrity_ok(data)
    else:
        _prepare(data)
        before = _digest(data)
        data.chmod(0o500)
        for p in data.iterdir():
            p.chmod(0o400)
        try:
            out = _start_and_fail(Daemon(data, daemon_options))
        finally:
            data.chmod(0o700)
        after = _digest(data)
        _integrity_ok(data)
    assert before == after, "the data directory changed"
    assert str(data) in out, out[-2000:]
    assert "read-only" in out.lower() or "readonly" in out.lower() or "permission" in out.lower(), out[-2000:]


def test_full_data_dir_is_a_clear_error_at_start(tmp_path, daemon_options):
    data = tmp_path / "full"
    if MOUNT:
        with tmpfs(data, "256k"):
            _prepare(data)
            # Fill what is left of the filesystem.
            with contextlib.suppress(OSError), open(data / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
            before = _digest(data)
            out = _start_and_fail(Daemon(data, daemon_options))
            after = _digest(data)
            (data / "filler").unlink()
            _integrity_ok(data)
    else:
        _prepare(data)
        before = _digest(data)

        def tiny_fsize() -> None:  # writes past 16 KiB fail with EFBIG instead of killing us
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))

        out = _start_and_fail(Daemon(data, daemon_options), preexec=tiny_fsize)
        after = _digest(data)
        _integrity_ok(data)
    # Every file that was there is unchanged (an empty lock file may have appeared).
    assert {k: v for k, v in before.items() if k != "filler"} == {
        k: v for k, v in after.items() if k in before and k != "filler"
    }, "the data directory changed"
    assert str(data) in out, out[-2000:]
    low = out.lower()
    assert "full" in low or "space" in low or "too large" in low, out[-2000:]
