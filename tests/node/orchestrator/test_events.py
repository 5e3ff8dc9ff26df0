"""The event hub and the node's in-memory logs."""

from __future__ import annotations

import trio

from node.orchestrator.events import NodeEvents


def test_subscriptions_see_their_request_only_and_end_when_the_node_stops():
    events = NodeEvents()

    async def main():
        one, every = events.subscribe("r1"), events.subscribe()
        events.emit("commit", "r2", node_id="b")
        events.emit("commit", "r1", node_id="a", members=[{"x": 1}])
        got = await one.__anext__()
        assert (got["type"], got["request_id"], got["members"]) == ("commit", "r1", [{"x": 1}])
        assert [(await every.__anext__())["request_id"] for _ in range(2)] == ["r2", "r1"]
        events.close()
        assert [e async for e in one] == []

    trio.run(main)


def test_the_event_log_keeps_scalar_fields_and_searches_them():
    events = NodeEvents(max_log=3)
    for i in range(5):
        events.emit("reveal", f"req-{i}", node_id=f"n{i}", members=[1, 2])
    lines = events.logs()
    assert [line["request_id"] for line in lines] == ["req-2", "req-3", "req-4"]
    assert "members" not in lines[0] and lines[0]["node_id"] == "n2"
    assert [line["request_id"] for line in events.logs(search="N3")] == ["req-3"]
    assert len(events.logs(last_n=1)) == 1
