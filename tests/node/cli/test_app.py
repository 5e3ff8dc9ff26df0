"""The rakis CLI through Typer's CliRunner: --version, init, id, --log-level."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from node import identity
from node.cli.app import app
from node.config import load_settings
from node.version import package_version

runner = CliRunner()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("RAKIS_"):
            monkeypatch.delenv(name)


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"rakis {package_version()}"


def test_init_creates_key_and_config(tmp_path: Path) -> None:
    data = tmp_path / "node"
    result = runner.invoke(app, ["init", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    key_file = data / "node.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    node_id = identity.load(data).node_id
    assert node_id in result.stdout
    assert load_settings(data).api_host == "127.0.0.1"  # the written config loads


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    assert runner.invoke(app, ["init", "-d", str(tmp_path)]).exit_code == 0
    first = identity.load(tmp_path).node_id
    result = runner.invoke(app, ["init", "-d", str(tmp_path)])
    assert result.exit_code == 1
    assert "already exists" in result.stderr and "--force" in result.stderr
    assert identity.load(tmp_path).node_id == first
    (tmp_path / "config.toml").write_text("api_port = 9999\n")
    result = runner.invoke(app, ["init", "-d", str(tmp_path), "--force"])
    assert result.exit_code == 0, result.output
    assert identity.load(tmp_path).node_id != first
    assert (tmp_path / "config.toml").read_text() == "api_port = 9999\n"  # user config kept


def test_id_prints_node_id_and_public_key(tmp_path: Path) -> None:
    runner.invoke(app, ["init", "-d", str(tmp_path)])
    ident = identity.load(tmp_path)
    result = runner.invoke(app, ["id", "-d", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["node_id"] == ident.node_id
    import base64

    assert base64.b64decode(out["public_key"]) == ident.public_key
    plain = runner.invoke(app, ["id", "-d", str(tmp_path)])
    assert ident.node_id in plain.stdout


def test_id_uses_rakis_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner.invoke(app, ["init", "-d", str(tmp_path)])
    monkeypatch.setenv("RAKIS_DATA_DIR", str(tmp_path))
    result = runner.invoke(app, ["id"])
    assert result.exit_code == 0 and identity.load(tmp_path).node_id in result.stdout


def test_id_errors_are_clear(tmp_path: Path) -> None:
    result = runner.invoke(app, ["id", "-d", str(tmp_path)])
    assert result.exit_code == 1 and "rakis init" in result.stderr
    runner.invoke(app, ["init", "-d", str(tmp_path)])
    os.chmod(tmp_path / "node.key", 0o644)
    result = runner.invoke(app, ["id", "-d", str(tmp_path)])
    assert result.exit_code == 1 and "chmod 600" in result.stderr


def test_log_level_is_validated(tmp_path: Path) -> None:
    ok = runner.invoke(app, ["--log-level", "DEBUG", "id", "-d", str(tmp_path)])
    assert ok.exit_code == 1  # no key yet, but the option parsed
    bad = runner.invoke(app, ["--log-level", "loud", "id"])
    assert bad.exit_code == 2 and "loud" in bad.output
