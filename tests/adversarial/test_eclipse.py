"""Eclipse by a withholding neighbour: an attacker that relays nothing but its own frames.

A node whose only connection is the attacker sees none of the honest network's requests
(the attack works: gossip cannot route around a cut it does not know about). A node with
an honest bootstrap peer in its config dials it directly and gets the traffic anyway.
Real libp2p hosts on 127.0.0.1."""

from __future__ import annotations

import pytest
import trio

from tests.node.p2p.conftest import Net, new_node, run_trio, wait_until

from .conftest import request_body

pytestmark = pytest.mark.timeout(90)


def test_withholding_neighbour_eclipses_a_node_unless_it_has_an_honest_bootstrap_peer():
    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            honest = await net.start(new_node())
            attacker = await net.start(new_node(), collect=False)
            # Withhold: accept (and so relay) only the attacker's own frames.
            attacker._pubsub.set_topic_validator(
                attacker.config.topic, lambda fwd, msg: fwd == attacker._libp2p_id, is_async_validator=False
            )
            eclipsed = await net.start(new_node())
            for n in (honest, eclipsed):
                await n.connect(attacker.listen_multiaddrs()[0])
                await n.wait_for_topic_peers(1)

            await honest.publish_body(request_body("h-1"))
            await attacker.publish_body(request_body("from-attacker"))
            await wait_until(lambda: "from-attacker" in net.prompts(eclipsed))
            await trio.sleep(1.5)
            assert "h-1" not in net.prompts(eclipsed)  # the eclipse works on a lone neighbour

            # Same position, but with the honest node as a configured bootstrap peer.
            guarded = await net.start(new_node(bootstrap=[honest.listen_multiaddrs()[0]]))
            await guarded.connect(attacker.listen_multiaddrs()[0])
            await wait_until(lambda: honest.peer_id in guarded.topic_peers(), timeout_s=15)
            await honest.publish_body(request_body("h-2"))
            await wait_until(lambda: "h-2" in net.prompts(guarded))
            assert "h-2" not in net.prompts(eclipsed)
            nursery.cancel_scope.cancel()

    run_trio(body, timeout_s=60)
