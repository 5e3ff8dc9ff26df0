"""`rakis node start` refuses bad flags and settings with a message naming the problem."""

from __future__ import annotations

from typer.testing import CliRunner

from node.cli.app import app


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
