"""A node says where it can be dialed: `rakis id` from config, `peer_info.addrs` on the wire."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio
from typer.testing import CliRunner

from node import identity, wire
from node.cli.app import app
from node.p2p.libp2p_compat import peer_id_from_public_key
from tests.node.p2p.conftest import Net, new_node, run_trio, wait_until

runner = CliRunner()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("RAKIS_"):
            monkeypatch.delenv(name)


def test_rakis_id_prints_peer_id_and_expanded_listen_addrs(tmp_path: Path) -> None:
    runner.invoke(app, ["init", "-d", str(tmp_path)])
    ident = identity.load(tmp_path)
    out = json.loads(runner.invoke(app, ["id", "-d", str(tmp_path), "--json"]).stdout)
    peer_id = str(peer_id_from_public_key(ident.public_key))
    assert out["node_id"] == ident.node_id and out["peer_id"] == peer_id
    assert out["addrs"], "the default 0.0.0.0 listen address expands to this machine's interfaces"
    for addr in out["addrs"]:
        assert "/0.0.0.0/" not in addr and addr.endswith(f"/tcp/4001/p2p/{peer_id}")
    plain = runner.invoke(app, ["id", "-d", str(tmp_path)]).stdout
    assert peer_id in plain and out["addrs"][0] in plain


def test_rakis_id_prints_announce_addrs_when_configured(tmp_path: Path) -> None:
    runner.invoke(app, ["init", "-d", str(tmp_path)])
    (tmp_path / "config.toml").write_text('announce_addrs = ["/ip4/203.0.113.7/tcp/4001"]\n')
    out = json.loads(runner.invoke(app, ["id", "-d", str(tmp_path), "--json"]).stdout)
    assert out["addrs"] == [f"/ip4/203.0.113.7/tcp/4001/p2p/{out['peer_id']}"]


def test_rakis_id_bad_config_is_one_line(tmp_path: Path) -> None:
    runner.invoke(app, ["init", "-d", str(tmp_path)])
    (tmp_path / "config.toml").write_text('announce_addrs = ["not a multiaddr"]\n')
    result = runner.invoke(app, ["id", "-d", str(tmp_path)])
    assert result.exit_code == 1 and "announce_addrs" in result.stderr


def test_peer_info_without_addrs_stays_valid() -> None:
    """Frames from nodes that predate `addrs` decode (the field defaults to empty)."""
    key = identity.Identity.generate()
    old = wire.PeerInfo(models=[], embedding_models=[], workers={}, device="cpu", version="0")
    frame = wire.encode(old, key.signing_key)
    assert wire.decode(frame).body.addrs == []


def test_peer_info_carries_dialable_addrs_into_the_peer_table() -> None:
    async def body() -> None:
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            a = await net.start(new_node(info_interval_s=0.5))
            b = await net.start(new_node(info_interval_s=0.5, announce_addrs=["/ip4/198.51.100.9/tcp/4001"]))
            await a.connect(b.listen_multiaddrs()[0])

            def announced() -> bool:
                rec = {r.node_id: r for r in a.peers()}.get(b.node_id)
                return rec is not None and bool(rec.announce_addrs)

            await wait_until(announced)
            rec = {r.node_id: r for r in a.peers()}[b.node_id]
            assert rec.announce_addrs == (f"/ip4/198.51.100.9/tcp/4001/p2p/{b.peer_id}",)
            assert rec.as_dict()["announce_addrs"] == list(rec.announce_addrs)
            back = {r.node_id: r for r in b.peers()}.get(a.node_id)
            assert back is None or all(x.endswith(a.peer_id) for x in back.announce_addrs)
            nursery.cancel_scope.cancel()

    run_trio(body)
