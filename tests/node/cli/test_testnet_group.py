"""``rakis testnet`` options that need no running daemons: --netns and --relayed refusals, partition of
an unknown or non-namespace node."""

from __future__ import annotations

from typer.testing import CliRunner

from node.cli.app import app
from node.testnet import NodeEntry, Testnet


def test_netns_without_root_is_refused_with_one_line(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    r = CliRunner().invoke(app, ["testnet", "up", "--netns", "-n", "2", "--dir", str(tmp_path / "net")])
    assert r.exit_code == 1
    assert "needs root" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "net" / "testnet.json").exists()  # nothing was planned or started


def test_netns_without_ip_is_refused_with_the_fix(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    r = CliRunner().invoke(app, ["testnet", "up", "--netns", "--dir", str(tmp_path / "net")])
    assert r.exit_code == 1 and "apt-get install iproute2" in r.output


def test_partition_names_the_problem(tmp_path) -> None:
    tn = Testnet(tmp_path / "net")
    tn._save([NodeEntry("node-0", str(tmp_path / "n0"), 1, 2, "a" * 64, "p", 1)])
    r = CliRunner().invoke(app, ["testnet", "partition", "node-0", "--dir", str(tn.root)])
    assert r.exit_code == 1 and "--netns" in r.output
    r = CliRunner().invoke(app, ["testnet", "heal", "node-9", "--dir", str(tn.root)])
    assert r.exit_code == 1 and "no node named 'node-9'" in r.output


def test_relayed_without_netns_is_refused_before_anything_starts(tmp_path) -> None:
    r = CliRunner().invoke(app, ["testnet", "up", "--relayed", "1", "--dir", str(tmp_path / "net")])
    assert r.exit_code == 1 and "--relayed needs --netns" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "net" / "testnet.json").exists()
