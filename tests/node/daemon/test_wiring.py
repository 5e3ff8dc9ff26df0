"""The daemon wires its parts from `Settings` once: a real in-process daemon (libp2p,
Hypercorn, orchestrator, tiny Llama, MiniLM) shows that config values reach the running
gossip node and that the node advertises the model identities it commits under."""

from __future__ import annotations

import httpx
import pytest

from tests.inprocess import InProcessServer, daemon_settings

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def wired_node(tmp_path_factory, tiny_llama_dir):
    import torch

    torch.set_num_threads(1)
    settings = daemon_settings(
        tmp_path_factory.mktemp("wired"),
        model="tiny-llama",
        model_dir=tiny_llama_dir,
        embedding_model="all-minilm-l6-v2",
        admin_token=None,
        seen_cache_entries=1234,
        rate_limit_per_peer=7.0,
        rate_limit_burst=30,
        announce_addrs=["/ip4/203.0.113.9/tcp/4001"],
    )
    node = InProcessServer.daemon(settings).start()
    try:
        yield node
    finally:
        node.stop()


def test_settings_reach_the_running_gossip_node(wired_node):
    gossip = wired_node.facade.gossip
    assert gossip.config.seen_max_entries == 1234
    assert gossip._seen.max_entries == 1234  # the replay cache libp2p frames go through
    assert (gossip.config.sender_rate, gossip.config.sender_burst) == (7.0, 30)
    # A forwarding peer carries many nodes' traffic: its limit is derived, not configured.
    assert gossip.config.peer_rate == 1000.0 and gossip.config.peer_burst == 4000.0
    announced = wired_node.call(gossip.announce_multiaddrs)
    assert announced == [f"/ip4/203.0.113.9/tcp/4001/p2p/{gossip.peer_id}"]


def test_the_node_advertises_the_model_identity_it_commits_under(wired_node):
    from engine.model_files import weights_hash

    facade = wired_node.facade
    expected = weights_hash(facade.llm.registry.resolve("tiny-llama"))
    info = wired_node.call(facade.advert.peer_info)
    assert info.model_hashes == {"tiny-llama": expected}  # fp32: the weights' own hash
    models = httpx.get(wired_node.url + "/v1/models", timeout=10).json()["data"]
    assert {m["id"]: m.get("model_hash") for m in models if m["type"] == "llm"} == {"tiny-llama": expected}
