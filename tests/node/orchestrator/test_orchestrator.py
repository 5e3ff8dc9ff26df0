"""The orchestrator over real parts: quorum machine, store, tiny Llama engine, MiniLM.

Nodes talk through the in-process bus of conftest (real signed frames, real decoder).
"""

from __future__ import annotations

import json

import pytest
import trio

from consensus.certificate import Certificate, verify_certificate
from node import wire
from node.identity import Identity
from node.orchestrator.config import OrchestratorConfig
from node.orchestrator.errors import RequestRejected
from node.orchestrator.orchestrator import Orchestrator
from node.store import Store
from tests.node.conftest import Bus, CoreCompute

pytestmark = pytest.mark.timeout(180)

FAST = OrchestratorConfig().quorum.__class__(
    reveal_request_grace_ms=200, commit_grace_ms=500, reveal_window_ms=8000, consensus_window_ms=4000
)


def make_request(
    client: Identity, *, quorum: int, max_time_ms: int = 30_000, prompt: str = "Name a colour."
) -> bytes:
    body = wire.InferenceRequest(
        prompt=prompt,
        accepted_models=["tiny-llama"],
        temperature=0.0,
        max_tokens=12,
        security_frame=wire.SecurityFrame(
            quorum=quorum,
            max_time_ms=max_time_ms,
            sec_distance=0.05,
            sec_percentage=0.75,
            embedding_model="all-minilm-l6-v2",
        ),
    )
    return wire.encode(body, client.signing_key)


class Net:
    """A few orchestrators on one bus, each with its own store and identity."""

    def __init__(self, tmp_path, engines, nursery: trio.Nursery) -> None:
        self.tmp_path = tmp_path
        self.core, self.emb = engines
        self.nursery = nursery
        self.bus = Bus()
        self.nodes: dict[str, Orchestrator] = {}
        self.scopes: dict[str, trio.CancelScope] = {}
        self.exited: dict[str, trio.Event] = {}

    async def start(
        self,
        name: str,
        *,
        fault: str = "honest",
        identity: Identity | None = None,
        gate: trio.Event | None = None,
    ) -> Orchestrator:
        data = self.tmp_path / name
        ident = identity or Identity.generate()
        store = Store(data)
        publish, packets = self.bus.attach(ident.node_id)
        orch = Orchestrator(
            identity=ident,
            store=store,
            compute=CoreCompute(self.core, self.emb, "tiny-llama", gate=gate),
            publish=publish,
            config=OrchestratorConfig(fault=fault, quorum=FAST),
        )
        scope = trio.CancelScope()
        exited = trio.Event()

        async def runner(task_status=trio.TASK_STATUS_IGNORED):
            try:
                with scope:
                    await orch.run(packets, task_status=task_status)
            finally:
                exited.set()

        await self.nursery.start(runner)
        self.nodes[name] = orch
        self.scopes[name] = scope
        self.exited[name] = exited
        return orch

    async def stop(self, name: str) -> Orchestrator:
        """Cancel the node and close its store only once its tasks have unwound: a task
        already resumed (say, by a finished embedding) runs to its next checkpoint
        before it sees the cancellation, and must not find the database closed."""
        orch = self.nodes.pop(name)
        self.bus.detach(orch.node_id)
        self.scopes.pop(name).cancel()
        with trio.fail_after(30):
            await self.exited.pop(name).wait()
        orch.store.close()
        return orch


def explain(v: dict, net: Net) -> str:
    """Why a request did not succeed, in short node ids (for assertion messages)."""
    short = {o.node_id: k for k, o in net.nodes.items()}
    return json.dumps(
        {
            "state": v["state"],
            "reason": v["reason"],
            "commits": [short.get(x["node_id"], x["node_id"][:6]) for x in v["commits"]],
            "reveals": [
                (short.get(x["node_id"], x["node_id"][:6]), x.get("status"), x["reason"])
                for x in v["reveals"]
            ],
        }
    )


async def wait_final(orch: Orchestrator, rid: str, timeout: float = 60) -> dict:
    with trio.fail_after(timeout):
        while True:
            v = orch.get_request(rid)
            if v is not None and v["state"] != "pending":
                return v
            await trio.sleep(0.1)


def _embed_fn(emb):
    def f(texts):
        return trio.from_thread.run(lambda: emb.embed(texts)).vectors

    return f


def test_three_nodes_reach_consensus_and_certificate_verifies(tmp_path, engines):
    async def main():
        async with trio.open_nursery() as nursery:
            net = Net(tmp_path, engines, nursery)
            a = await net.start("a")
            b = await net.start("b")
            c = await net.start("c")
            rid = await a.submit_request(make_request(Identity.generate(), quorum=3))
            assert await a.submit_request(a.store.get_request(rid).frame) == rid  # duplicate: same id
            views = [await wait_final(n, rid) for n in (a, b, c)]
            for v in views:
                assert v["state"] == "succeeded", explain(v, net)
                assert v["reason"] is None
                assert {m["node_id"] for m in v["members"]} == {a.node_id, b.node_id, c.node_id}
            assert len({v["answer"] for v in views}) == 1
            cert = Certificate.from_json(json.dumps(views[0]["certificate"]))

            def open_frame(frame):
                p = wire.decode(frame, limits=wire.WireLimits(max_clock_skew_ms=86_400_000))
                return p.type.value, p.sender, p.body.model_dump()

            report = await trio.to_thread.run_sync(
                lambda: verify_certificate(
                    cert,
                    open_frame=open_frame,
                    embed_fn=_embed_fn(net.emb),
                    request_id_of=lambda f: (
                        wire.decode(f, limits=wire.WireLimits(max_clock_skew_ms=86_400_000)).packet_id
                    ),
                )
            )
            assert report.ok, report.problems
            rep = a.store.reputation()
            assert rep[b.node_id]["accepted"] == 1 and rep[b.node_id]["in_cluster"] == 1
            assert a.reputation()[b.node_id]["score"] > 0.5
            for n in list(net.nodes):
                await net.stop(n)

    trio.run(main)


@pytest.mark.parametrize("fault", ["garbage", "off-topic"])
def test_faulty_node_is_left_out(tmp_path, engines, fault):
    async def main():
        async with trio.open_nursery() as nursery:
            net = Net(tmp_path, engines, nursery)
            honest = [await net.start(n) for n in ("a", "b", "c")]
            bad = await net.start("bad", fault=fault)
            # Quorum 3 of the 4 committers: a failed re-check does not count toward the
            # quorum (proof of inference), so the three honest outputs must carry it.
            rid = await honest[0].submit_request(
                make_request(Identity.generate(), quorum=3, prompt="Say hello.")
            )
            v = await wait_final(honest[1], rid)
            assert v["state"] == "succeeded", explain(v, net)
            members = {m["node_id"] for m in v["members"]}
            assert members == {n.node_id for n in honest}
            assert bad.node_id not in members
            assert v["recheck"] == "checked" and v["answer_rule"] == "max_log_likelihood"
            verdicts = {r["node_id"]: r["recheck"]["status"] for r in v["reveals"]}
            assert verdicts[bad.node_id] == "failed"
            assert {verdicts[n.node_id] for n in honest} == {"passed"}
            rep = honest[1].store.reputation()[bad.node_id]
            assert rep["rejected"] == 1 and rep["failed_recheck"] == 1
            for n in list(net.nodes):
                await net.stop(n)

    trio.run(main)


def test_missing_commits_fail_with_reason_and_bad_frames_are_refused(tmp_path, engines):
    async def main():
        async with trio.open_nursery() as nursery:
            net = Net(tmp_path, engines, nursery)
            a = await net.start("a")
            await net.start("quiet", fault="silent")
            frame = make_request(Identity.generate(), quorum=2, max_time_ms=3000)
            with pytest.raises(wire.WireError):
                await a.submit_request(frame[:-3] + b"xyz")
            commit = wire.encode(
                wire.InferenceCommit(
                    request_id="a" * 64, inference_id="b" * 32, model="m", model_hash="sha256:" + "ab" * 32, commit=b"c" * 32
                ),
                Identity.generate().signing_key,
            )
            with pytest.raises(RequestRejected) as e:
                await a.submit_request(commit)
            assert e.value.reason == "not_a_request"
            n_sent = len(net.bus.sent)
            rid = await a.submit_request(frame)
            assert len(net.bus.sent) > n_sent
            v = await wait_final(a, rid, timeout=30)
            assert (v["state"], v["reason"]) == ("failed", "not_enough_commits")
            for n in list(net.nodes):
                await net.stop(n)

    trio.run(main)


def test_restart_reveals_commit_made_before_stop_and_serves_results(tmp_path, engines):
    """A node that committed, stopped before the reveal phase and restarted from its
    store still reveals that commit; afterwards it serves the stored result."""

    async def main():
        async with trio.open_nursery() as nursery:
            net = Net(tmp_path, engines, nursery)
            a = await net.start("a")
            gate = trio.Event()
            b = await net.start("b", gate=gate)  # b's inference waits: quorum 3 is not reached
            ident_c = Identity.generate()
            c = await net.start("c", identity=ident_c)
            rid = await a.submit_request(make_request(Identity.generate(), quorum=3, max_time_ms=40_000))
            with trio.fail_after(60):
                while c.get_request(rid) is None or c.get_request(rid)["stage"] != "committed":
                    await trio.sleep(0.1)
            assert c.store.get_inference(rid).state == "committed"
            await net.stop("c")
            c2 = await net.start("c", identity=ident_c)
            assert c2.get_request(rid)["stage"] == "committed"
            gate.set()  # b commits now; the reveal request names c's pre-restart commit
            v = await wait_final(a, rid)
            assert v["state"] == "succeeded", explain(v, net)
            assert c2.node_id in {m["node_id"] for m in v["members"]}
            assert b.node_id in {m["node_id"] for m in v["members"]}
            assert c2.store.get_inference(rid).state == "revealed"
            vc = await wait_final(c2, rid)
            await net.stop("c")
            c3 = await net.start("c", identity=ident_c)
            again = c3.get_request(rid)
            assert again["state"] == vc["state"] == "succeeded"
            assert again["answer"] == vc["answer"]
            assert again["certificate"] is not None
            for n in list(net.nodes):
                await net.stop(n)

    trio.run(main)


def test_unsent_packets_are_published_after_restart(tmp_path, engines):
    """Persist first, publish second: a commit that could not be sent before the stop
    is sent by the restarted node, and the request completes."""

    async def main():
        async with trio.open_nursery() as nursery:
            net = Net(tmp_path, engines, nursery)
            a = await net.start("a")
            ident_c = Identity.generate()
            c = await net.start("c", identity=ident_c)
            net.bus.down.add(ident_c.node_id)
            frame = make_request(Identity.generate(), quorum=2, max_time_ms=40_000)
            rid = await a.submit_request(frame)
            await net.bus.nodes[ident_c.node_id].send(frame)  # c hears the request, cannot answer
            with trio.fail_after(60):
                while c.get_request(rid) is None or c.get_request(rid)["stage"] != "committed":
                    await trio.sleep(0.1)
            assert [p["type"] for p in c.store.unsent_packets(rid)] == ["inference_commit"]
            await net.stop("c")
            net.bus.down.discard(ident_c.node_id)
            c2 = await net.start("c", identity=ident_c)
            assert c2.store.unsent_packets(rid) == []
            v = await wait_final(a, rid)
            assert v["state"] == "succeeded", explain(v, net)
            assert ident_c.node_id in {m["node_id"] for m in v["members"]}
            for n in list(net.nodes):
                await net.stop(n)

    trio.run(main)


def test_request_past_its_deadline_is_expired_and_refused_at_submit(tmp_path, engines):
    async def main():
        async with trio.open_nursery() as nursery:
            net = Net(tmp_path, engines, nursery)
            a = await net.start("a")
            body = wire.InferenceRequest(
                prompt="late",
                accepted_models=["tiny-llama"],
                temperature=0.0,
                max_tokens=4,
                security_frame=wire.SecurityFrame(
                    quorum=1,
                    max_time_ms=1000,
                    sec_distance=0.1,
                    sec_percentage=1.0,
                    embedding_model="all-minilm-l6-v2",
                ),
            )
            import time

            old = wire.encode(body, Identity.generate().signing_key, ts_ms=int(time.time() * 1000) - 5000)
            with pytest.raises(RequestRejected) as e:
                await a.submit_request(old)
            assert e.value.reason == "expired"
            # The same frame arriving by gossip is recorded as expired, never run.
            await a.handle_packet(wire.decode(old))
            v = a.get_request(wire.decode(old).packet_id)
            assert (v["state"], v["reason"]) == ("expired", "expired")
            assert a.store.get_inference(v["request_id"]) is None
            for n in list(net.nodes):
                await net.stop(n)

    trio.run(main)


def test_lost_reveals_are_asked_for_again(tmp_path, engines):
    """A verifier that lost the other nodes' reveals asks again and still decides."""

    async def main():
        async with trio.open_nursery() as nursery:
            net = Net(tmp_path, engines, nursery)
            a, b, c = [await net.start(n) for n in ("a", "b", "c")]
            lost: set[str] = set()

            def lose(receiver, pkt):
                # c loses the first reveal of every other node
                if (
                    receiver == c.node_id
                    and pkt.type is wire.PacketType.INFERENCE_REVEAL
                    and pkt.sender_id not in lost
                ):
                    lost.add(pkt.sender_id)
                    return True
                return False

            net.bus.lose = lose
            rid = await a.submit_request(make_request(Identity.generate(), quorum=3))
            v = await wait_final(c, rid)
            assert v["state"] == "succeeded", explain(v, net)
            assert lost == {a.node_id, b.node_id}
            assert {m["node_id"] for m in v["members"]} == {a.node_id, b.node_id, c.node_id}
            for n in list(net.nodes):
                await net.stop(n)

    trio.run(main)


def test_node_that_missed_a_commit_still_reveals(tmp_path, engines):
    """c never receives a's commit: it cannot validate the reveal requests naming it
    until a repeats its commit along with its repeated reveal request."""

    async def main():
        async with trio.open_nursery() as nursery:
            net = Net(tmp_path, engines, nursery)
            a, b, c = [await net.start(n) for n in ("a", "b", "c")]
            dropped: list[str] = []

            def lose(receiver, pkt):
                if (
                    receiver == c.node_id
                    and pkt.type is wire.PacketType.INFERENCE_COMMIT
                    and pkt.sender_id == a.node_id
                    and not dropped
                ):
                    dropped.append(pkt.packet_id)
                    return True
                return False

            net.bus.lose = lose
            rid = await a.submit_request(make_request(Identity.generate(), quorum=3))
            v = await wait_final(a, rid)
            assert dropped
            assert v["state"] == "succeeded", explain(v, net)
            assert {m["node_id"] for m in v["members"]} == {a.node_id, b.node_id, c.node_id}
            for n in list(net.nodes):
                await net.stop(n)

    trio.run(main)
