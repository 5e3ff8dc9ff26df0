"""Collusion on real daemons: two `--fault off-topic` nodes give the *same* wrong answer
(they collude perfectly) next to three honest ones. Their outputs fail the re-check on
every node (the model would not write them), so the honest answer wins everywhere and
the colluders are never members."""

from __future__ import annotations

import pytest

from tests.daemon_helpers import Daemon

from .conftest import make_frame

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def test_two_colluders_below_the_threshold_do_not_change_the_answer(trio_net, daemon_options, tmp_path):
    a, b, c = trio_net["a"], trio_net["b"], trio_net["c"]
    boot = [a.addr, b.addr, c.addr]
    colluders = [
        Daemon(tmp_path / f"x{i}", daemon_options, bootstrap=boot, fault="off-topic") for i in range(2)
    ]
    try:
        for d in colluders:
            d.start()
        for d in colluders:
            d.wait_ready()
        for d in (a, *colluders):
            d.wait_for(lambda d=d: d.peer_count() >= 4, 90, "five nodes meshed")
        # Quorum 3 of the 5 committers: the colluders' outputs fail their re-check on every
        # node and do not count toward the quorum (proof of inference).
        rid = a.submit(make_frame("Name a colour.", quorum=3, sec_percentage=0.6, max_time_ms=120_000))
        views = {d.data_dir.name: d.wait_final(rid, 150) for d in (a, b, c, *colluders)}
        honest_ids = {a.node_id, b.node_id, c.node_id}
        answers = set()
        for name, v in views.items():
            assert (v["state"], v["reason"]) == ("succeeded", None), (name, v)
            assert {m["node_id"] for m in v["members"]} == honest_ids, (name, v["members"])
            answers.add(v["answer"])
        assert len(answers) == 1
        from node.orchestrator.compute import OFF_TOPIC_ANSWER

        assert answers != {OFF_TOPIC_ANSWER}
        verdicts = {r["node_id"]: (r.get("recheck") or {}).get("status") for r in views["a"]["reveals"]}
        assert all(verdicts.get(d.node_id) == "failed" for d in colluders), views["a"]["reveals"]
    finally:
        for d in colluders:
            d.stop()
