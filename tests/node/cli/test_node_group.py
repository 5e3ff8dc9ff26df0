"""`rakis node start` refuses bad flags and settings with a message naming the problem,
and turns every start-up failure into one line with the fix, never a traceback.

The start-up failures run the real start path (settings, `run_daemon`, `serve`, its
preflight): in-process through Typer's CliRunner, and once as a real `rakis` process.
None of them loads a model: they are refused before that, which is the point.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from node.cli.app import app

pytestmark = pytest.mark.timeout(120)
LOCAL = ["--api", "127.0.0.1:0", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("RAKIS_"):
            monkeypatch.delenv(name)


def _run(args, env=None):
    return CliRunner().invoke(app, ["node", "start", *args], env=env or {})


def test_bad_api_address_is_named(tmp_path):
    r = _run(["--data-dir", str(tmp_path), "--api", "localhost"])
    assert r.exit_code != 0
    assert "HOST:PORT" in r.output


def test_bad_model_spec_is_named(tmp_path):
    r = _run(["--data-dir", str(tmp_path), "--model", "smollm2=two"])
    assert r.exit_code != 0
    assert "NAME=WORKERS" in r.output


def test_bad_setting_from_environment_is_named(tmp_path):
    r = _run(["--data-dir", str(tmp_path)], env={"RAKIS_REVEAL_WINDOW_S": "-3"})
    assert r.exit_code == 1
    assert "reveal_window_s" in r.output


def test_bad_multiaddr_is_named(tmp_path):
    r = _run(["--data-dir", str(tmp_path), "--listen", "tcp:4001"])
    assert r.exit_code == 1
    assert "multiaddr" in r.output


def test_unknown_fault_mode_is_refused(tmp_path):
    r = _run(["--data-dir", str(tmp_path), "--fault", "evil"])
    assert r.exit_code != 0
    assert "evil" in r.output


# ---- start-up failures: one line with the fix ------------------------------------------------


def _error_line(result) -> str:
    """The CLI's one `error:` line; fails on a traceback or on a second error line."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # not an escaped error
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other program is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_unknown_model_is_one_line_naming_the_choices(tmp_path):
    r = _run(["--data-dir", str(tmp_path), *LOCAL, "--model", "gpt-5"])
    line = _error_line(r)
    assert "unknown model 'gpt-5'" in line and "available:" in line and "smollm2-135m-instruct" in line
    assert "--model NAME" in line and "model_paths" in line


def test_unknown_embedding_model_is_one_line(tmp_path):
    r = _run(["--data-dir", str(tmp_path), *LOCAL, "--embedding-model", "bge-huge"])
    line = _error_line(r)
    assert "unknown model 'bge-huge'" in line and "all-minilm-l6-v2" in line and "--embedding-model" in line


def test_unsupported_architecture_is_refused_before_loading(tmp_path):
    """A model_paths entry whose config.json (written by transformers itself) names an
    architecture the engine does not run: refused by name, no weights read."""
    from transformers import GPT2Config

    model_dir = tmp_path / "gpt2-tiny"
    GPT2Config(n_layer=1, n_embd=32, n_head=2, architectures=["GPT2LMHeadModel"]).save_pretrained(model_dir)
    data_dir = tmp_path / "node"
    env = {"RAKIS_MODEL_PATHS": json.dumps({"gpt2-tiny": str(model_dir)})}
    r = _run(["--data-dir", str(data_dir), *LOCAL, "--model", "gpt2-tiny"], env=env)
    line = _error_line(r)
    assert f"model 'gpt2-tiny' at {model_dir} is model_type 'gpt2' (GPT2LMHeadModel)" in line
    assert "llama, mistral, qwen2" in line


def test_model_path_that_does_not_exist_is_one_line(tmp_path):
    env = {"RAKIS_MODEL_PATHS": json.dumps({"mine": str(tmp_path / "nowhere")})}
    line = _error_line(_run(["--data-dir", str(tmp_path), *LOCAL, "--model", "mine"], env=env))
    assert "model_paths: model 'mine': path" in line and "does not exist" in line


def test_http_port_in_use_is_one_line(tmp_path, taken_port):
    args = [
        "--data-dir",
        str(tmp_path),
        "--api",
        f"127.0.0.1:{taken_port}",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ]
    line = _error_line(_run([*args, "--no-mdns"]))
    assert f"HTTP API address 127.0.0.1:{taken_port} is already in use" in line and "--api" in line


def test_libp2p_port_in_use_is_one_line(tmp_path, taken_port):
    """libp2p itself would start with no listener at all; the node refuses instead."""
    args = [
        "--data-dir",
        str(tmp_path),
        "--api",
        "127.0.0.1:0",
        "--listen",
        f"/ip4/127.0.0.1/tcp/{taken_port}",
    ]
    line = _error_line(_run([*args, "--no-mdns"]))
    assert f"libp2p address 127.0.0.1:{taken_port} is already in use" in line
    assert "--listen /ip4/127.0.0.1/tcp/PORT" in line


@pytest.mark.parametrize(
    "addr",
    ["/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/tcp/4001/p2p/not-a-peer-id", "/dns4/tcp/4001"],
    ids=["no-peer-id", "bad-peer-id", "garbled"],
)
def test_bad_bootstrap_address_is_one_line(tmp_path, addr):
    line = _error_line(_run(["--data-dir", str(tmp_path), *LOCAL, "--bootstrap", addr]))
    assert f"bad bootstrap address {addr!r}" in line and "/p2p/<peer id>" in line and "listen:" in line


def test_data_dir_in_use_is_one_line(tmp_path):
    from node.daemon.datadir import lock_data_dir

    tmp_path.mkdir(exist_ok=True)
    held = lock_data_dir(tmp_path)
    try:
        line = _error_line(_run(["--data-dir", str(tmp_path), *LOCAL]))
    finally:
        held.close()
    assert "is in use by another rakis node" in line


def test_real_process_prints_one_line_and_no_traceback(tmp_path):
    """The installed entry point as a user runs it: exit 1, `error: ...` as the last line
    of stderr, no traceback, nothing on stdout, and quickly (no model is loaded)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAKIS_")}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[3]), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-c", "from node.cli.app import app; app()", "node", "start", "-d", str(tmp_path)]
        + LOCAL
        + ["--model", "gpt-5"],
        capture_output=True,
        text=True,
        timeout=110,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: unknown model 'gpt-5'"), proc.stderr
    assert [line for line in lines if line.startswith("error:")] == lines[-1:]


# ---- the mapping itself ---------------------------------------------------------------------


def test_explain_maps_late_failures_to_one_line():
    from engine.registry import UnknownModelError
    from node.daemon.startup_errors import StartupError, explain, port_error
    from node.p2p.libp2p_compat import AddressError

    missing = UnknownModelError("smollm2-135m-instruct", [], detail="its files are missing: no package")
    assert (
        explain(missing)
        == "unknown model 'smollm2-135m-instruct' (its files are missing: no package); available: none"
    )
    assert "--model NAME" in explain(UnknownModelError("x", ["a"]))
    assert "/p2p/<peer id>" in explain(AddressError("bad peer multiaddr '/ip4/1.2.3.4'"))
    assert (
        explain(RuntimeError("could not load 1 worker(s) of 'm': w#1: ValueError: bad\nmore")).count("\n")
        == 0
    )
    in_use = OSError(errno.EADDRINUSE, "Address already in use")
    assert "already in use" in explain(in_use)
    assert explain(StartupError("a\nb")) == "a; b"
    assert explain(KeyError("a bug")) is None  # not a start-up failure: the CLI says so
    line = str(port_error("HTTP API", "10.9.9.9:80", OSError(errno.EADDRNOTAVAIL, "x"), "--api HOST:PORT"))
    assert "not an address of this machine" in line


@pytest.mark.parametrize("which", ["http", "libp2p"])
def test_port_taken_after_the_preflight_is_still_one_line(tmp_path, taken_port, monkeypatch, which):
    """The bind itself (a port taken between the check and the bind): hypercorn's OSError,
    and libp2p's silent start without a listener, both end as one line too."""
    import node.daemon.run as run

    monkeypatch.setattr(run, "preflight", lambda settings: None)
    api = f"127.0.0.1:{taken_port}" if which == "http" else "127.0.0.1:0"
    listen = f"/ip4/127.0.0.1/tcp/{taken_port if which == 'libp2p' else 0}"
    line = _error_line(_run(["--data-dir", str(tmp_path), "--api", api, "--listen", listen, "--no-mdns"]))
    if which == "http":
        assert f"HTTP API address {api} is already in use" in line
    else:
        assert f"libp2p could not listen on {listen} (port in use?)" in line and "--listen" in line
