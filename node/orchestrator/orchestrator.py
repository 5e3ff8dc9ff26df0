"""The orchestrator: request -> inference -> commit -> reveal -> verification -> result.

The rules of consensus live in ``consensus.quorum.QuorumMachine`` (pure, clock-free);
this module feeds it events (packets from gossip or the API, our own inference and
embedding results, the passing of time) and carries out the actions it returns:
publish a packet, embed a revealed output with consensus priority, record the final
state. Everything that the node promises to the network is written to the store
*before* it is published (``outbox``): the machine's snapshot and the outgoing frame
go to disk first, the frame is sent second and marked sent third, so a node killed at
any point resumes with the same commitments and re-sends what it had not sent yet.

Packets are handled idempotently: the machine counts one commit, one reveal request
and one reveal per node, the store keeps one copy of each packet, and our own packets
echoed back by gossip are ignored.

This module keeps only the life cycle; each other job has a module of its own (see
the package docstring, ``node/orchestrator/__init__.py``), built here and handed what
it needs, so none of them imports this module back.

Why this module is long: the life cycle's steps (inputs, feeding the machine, our
inference and its committee round, applying actions, resume, history-sync ingest) all
read and write the same live record and machine; every other job (admission, checks,
committees, outbox, reveals, results, views, events, orphans) is already its own module.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio

from consensus import quorum as q
from consensus.models import AcceptedModels
from node import metrics, wire
from node.clock import now_ms
from node.identity import Identity
from node.logs import get_logger
from node.orchestrator.admission import check_submission
from node.orchestrator.checks import RevealChecks
from node.orchestrator.committee import Committees
from node.orchestrator.compute import Compute, with_fault
from node.orchestrator.config import OrchestratorConfig
from node.orchestrator.events import NodeEvents
from node.orchestrator.inference import OwnInference
from node.orchestrator.live import LiveRequest
from node.orchestrator.orphans import OrphanPackets
from node.orchestrator.outbox import Outbox, Staged, body_for
from node.orchestrator.results import ResultRecorder, reputation_view
from node.orchestrator.reveals import RevealResender
from node.orchestrator.views import RequestViews, stage_of
from node.store import Store

log = get_logger(__name__)

__all__ = ["Orchestrator"]


class Orchestrator:
    """Drives every request this node sees. Runs inside the daemon's trio loop.

    ``publish`` sends a frame on gossip (``GossipNode.publish``). ``compute`` gives
    access to the local engines; ``None`` makes a relay/verifier-less node. An output
    fault in ``config.fault`` wraps it (``compute.FaultyCompute``).
    """

    def __init__(
        self,
        *,
        identity: Identity,
        store: Store,
        compute: Compute | None,
        publish: Callable[[bytes], Awaitable[None]],
        config: OrchestratorConfig | None = None,
        penalize: Callable[[str, str], object] | None = None,
        committees: Committees | None = None,
    ) -> None:
        """``penalize(node_id, reason)`` is called when a peer's revealed output fails
        its re-check: the daemon throttles, then bans, that key
        (``GossipNode.penalize_sender``). ``committees``: committee sortition
        (``node.orchestrator.committee``); ``None`` runs every request."""
        self.identity = identity
        self.committees = committees
        self.store = store
        self.config = cfg = config or OrchestratorConfig()
        self.compute = with_fault(compute, cfg.fault)
        self.node_id = identity.node_id
        self._live: dict[str, LiveRequest] = {}
        self._nursery: trio.Nursery | None = None
        self._accepting = False
        self.events = NodeEvents()
        self.outbox = Outbox(
            identity=identity,
            store=store,
            publish=publish,
            limits=cfg.limits,
            events=self.events,
            silent=cfg.silent,
        )
        self.orphans = OrphanPackets(
            store,
            ttl_s=cfg.orphan_packet_ttl_s,
            max_packets=cfg.max_orphan_packets,
            prune_interval_s=cfg.orphan_prune_interval_s,
        )
        self.reveals = RevealResender(
            node_id=self.node_id,
            store=store,
            outbox=self.outbox,
            resend_s=cfg.reveal_request_resend_s,
            silent=cfg.silent,
        )
        self.results = ResultRecorder(store, node_id=self.node_id, limits=cfg.limits)
        self.views = RequestViews(store, cfg.limits)
        self.checks = RevealChecks(
            node_id=self.node_id,
            compute=self.compute,
            events=self.events,
            live_of=self._live.get,
            apply=self._apply,
            penalize=penalize,
        )
        self.inference = (
            None
            if self.compute is None
            else OwnInference(
                store=store, compute=self.compute, events=self.events, public_key=identity.public_key
            )
        )

    # ================================================================ life cycle

    async def run(
        self,
        packets: AsyncIterator[wire.SignedPacket] | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Resume from the store, then handle packets and timers until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = self.checks.nursery = nursery
            self.orphans.prune()
            await self._resume()
            self._accepting = True
            nursery.start_soon(self._ticker)
            if packets is not None:
                nursery.start_soon(self._consume, packets)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._accepting = False
                self.events.close()

    def stop_accepting(self) -> None:
        """First step of a graceful shutdown: refuse new API submissions."""
        self._accepting = False

    @property
    def accepting(self) -> bool:
        return self._accepting

    async def _consume(self, packets: AsyncIterator[wire.SignedPacket]) -> None:
        async for pkt in packets:
            try:
                await self.handle_packet(pkt)
            except Exception:  # one bad packet must never stop the node
                log.exception("packet_handling_failed", packet_type=str(pkt.type), packet_id=pkt.packet_id)

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self.config.tick_s)
            if self.orphans.prune_due():
                try:
                    self.orphans.prune()
                except Exception:
                    log.exception("orphan_prune_failed")
            now = now_ms()
            for rid, live in list(self._live.items()):
                try:
                    if self.committees is not None and not live.inferring and live.machine.own is None:
                        self._start_inference(rid, live)  # the committee may have widened to us
                    await self._apply(rid, live.machine.tick(now), save_if_idle=False)
                    await self.reveals.maybe_resend_reveal_request(rid, live, now)
                except Exception:
                    log.exception("tick_failed", request_id=rid)

    # ================================================================ inputs

    async def submit_request(self, frame: bytes) -> str:
        """API path: decode, check, persist, gossip, then take part like any node."""
        # (submission metrics are counted by the HTTP layer)
        try:
            pkt = wire.decode(frame, limits=self.config.limits)
        except wire.WireError as e:
            self.events.note_packet(None, "in", verdict=f"rejected:{e.reason.value}", size=len(frame))
            raise
        if (
            pkt.type is wire.PacketType.INFERENCE_REQUEST
            and self.store.get_request(pkt.packet_id) is not None
        ):
            return pkt.packet_id  # duplicate of an accepted request (even if finished since)
        embedding_models = self.compute.embedding_models() if self.compute is not None else None
        rid = check_submission(pkt, accepting=self._accepting, embedding_models=embedding_models)
        self._persist_request(pkt)
        await self.outbox.send(pkt.frame, pkt.type)
        self.events.note_packet(pkt, "in", verdict="accepted (api)")
        await self._on_request(pkt)
        return rid

    async def handle_packet(self, pkt: wire.SignedPacket) -> None:
        """Gossip path: one verified packet (signature and schema already checked)."""
        if pkt.sender_id == self.node_id:
            return  # our own packet echoed back; the machine already counted it
        self.events.note_packet(pkt, "in", verdict="accepted")
        if pkt.type is wire.PacketType.INFERENCE_REQUEST:
            if self.store.get_request(pkt.packet_id) is None:
                self._persist_request(pkt)
            await self._on_request(pkt)
            return
        rid = getattr(pkt.body, "request_id", None)
        if rid is None:
            return  # peer_info / peer_status: the gossip layer's peer table handles them
        live = self._live.get(rid)
        if live is None and not self.store.has_request(rid):
            self.orphans.keep(pkt, rid)
            return  # replayed from the store if the request arrives (``_on_request``)
        self.store.add_packet(
            pkt.packet_id, request_id=rid, type=pkt.type.value, sender_id=pkt.sender_id, frame=pkt.frame
        )
        if live is None:
            # Request unknown yet (the packet is kept and replayed when it arrives), or
            # final here: then a late verifier may still need our reveal.
            if isinstance(pkt.body, wire.InferenceRevealRequest):
                await self.reveals.reveal_again_from_store(rid, pkt.body, now_ms())
            return
        await self._feed(rid, live, pkt, now_ms())

    async def ingest_synced(self, pkt: wire.SignedPacket, outcome: dict[str, Any] | None = None) -> str:
        """History sync (``node.p2p.sync``): a packet a peer served, verified like gossip.

        Without ``outcome`` it takes the gossip path (``handle_packet``), except a request
        too late to take part in, which is not started (it would only expire here).
        With ``outcome`` (a certificate the caller re-checked end to end: ``answer``,
        ``members``, ``result``, ``certificate`` bytes), ``pkt`` is that finished request
        and its success is recorded from it. Returns what was done."""
        rid = pkt.packet_id
        if outcome is not None:
            if self.store.get_request(rid) is None:
                self._persist_request(pkt)
            return self.results.adopt(rid, outcome, self.events.emit)
        if pkt.type is wire.PacketType.INFERENCE_REQUEST and self.store.get_request(rid) is None:
            _, actions = LiveRequest.start(pkt, own_pubkey=self.identity.public_key, config=self.config.quorum, now=now_ms())
            if any(isinstance(a, q.Finished) for a in actions):
                return "too_late"
        await self.handle_packet(pkt)
        return "handled"

    async def _feed(self, rid: str, live: LiveRequest, pkt: wire.SignedPacket, now: int) -> None:
        """Give one peer packet to the request's machine and carry out what it returns."""
        m = live.machine
        body = pkt.body
        emit = self.events.emit
        actions: list[q.Action] = []
        if isinstance(body, wire.InferenceCommit) and self._outside_committee(rid, pkt, now):
            pass  # ignored and counted: not a committee member for the round it claims
        elif isinstance(body, wire.InferenceCommit):
            model = {"model": body.model, "model_hash": body.model_hash}
            actions = m.commit_seen(pkt.sender, body.inference_id, body.commit, now, **model)
            emit("commit", rid, node_id=pkt.sender_id, inference_id=body.inference_id, model=body.model)
        elif isinstance(body, wire.InferenceRevealRequest):
            refs = [q.CommitRef(c.node_id, c.inference_id, c.commit) for c in body.commits]
            actions = m.reveal_request_seen(pkt.sender, refs, now)
            if not any(isinstance(a, q.PublishReveal) for a in actions):
                await self.reveals.maybe_reveal_again(rid, live, body, now)
            emit("reveal_request", rid, node_id=pkt.sender_id, commits=len(refs))
        elif isinstance(body, wire.InferenceReveal):
            model = {"model": body.model, "model_hash": body.model_hash, "output_tokens": body.output_tokens}
            actions = m.reveal_seen(pkt.sender, body.inference_id, body.output, body.b, now, **model)
            emit("reveal", rid, node_id=pkt.sender_id, inference_id=body.inference_id)
        elif isinstance(body, wire.InferenceRevealRejected):
            emit("reveal_rejected", rid, by=pkt.sender_id, inference_id=body.inference_id, reason=body.reason)
        elif isinstance(body, wire.InferenceQuorumComputed):
            emit("quorum_computed", rid, by=pkt.sender_id, success=body.success, reason=body.reason)
        await self._apply(rid, actions)

    def _outside_committee(self, rid: str, pkt: wire.SignedPacket, now: int) -> bool:
        if self.committees is None:
            return False
        assert isinstance(pkt.body, wire.InferenceCommit)
        verdict = self.committees.admit(rid, pkt.sender, pkt.body, now)
        if verdict is None or verdict.accepted:
            return False
        self.events.emit("commit_ignored", rid, node_id=pkt.sender_id, reason=verdict.reason)
        return True

    # ================================================================ requests

    def _persist_request(self, pkt: wire.SignedPacket) -> None:
        body = pkt.body
        assert isinstance(body, wire.InferenceRequest)
        new = self.store.add_request(
            pkt.packet_id,
            pkt.frame,
            client_id=pkt.sender_id,
            created_at=pkt.ts_ms,
            ending_at=pkt.ts_ms + body.security_frame.max_time_ms,
        )
        if new:
            self.orphans.request_arrived()

    async def _on_request(self, pkt: wire.SignedPacket) -> None:
        rid = pkt.packet_id
        if rid in self._live:
            return
        row = self.store.get_request(rid)
        if row is not None and row.final:
            return
        now = now_ms()
        live, actions = LiveRequest.start(
            pkt, own_pubkey=self.identity.public_key, config=self.config.quorum, now=now
        )
        self._live[rid] = live
        if self.committees is not None:
            self.committees.open(rid, live.body, pkt.ts_ms, now)
        metrics.REQUESTS_ACTIVE.set(len(self._live))
        self.events.emit("request", rid, client_id=pkt.sender_id, prompt=live.body.prompt[:200])
        await self._apply(rid, actions)
        if rid not in self._live:
            return  # already final (expired on arrival)
        # Packets that arrived before the request (gossip does not keep order).
        for stored in self.store.packets_for(rid):
            if stored["own"] or stored["type"] == wire.PacketType.INFERENCE_REQUEST.value:
                continue
            try:
                early = wire.decode(stored["frame"], limits=self.config.limits, check_time=False)
            except wire.WireError:
                continue
            if rid in self._live:
                # At the time it arrived: a commit that came in time stays in time.
                await self._feed(rid, live, early, min(now, int(stored["received_at"])))
        if rid in self._live:
            self._start_inference(rid, live)

    # ================================================================ our inference

    def _start_inference(self, rid: str, live: LiveRequest) -> None:
        if live.inferring or live.machine.own is not None or live.machine.final:
            return
        if self.config.silent or self.compute is None or self._nursery is None:
            return
        accepted = AcceptedModels.parse(live.body.accepted_models)
        models = [
            name
            for name in self.compute.llm_models()
            if (h := self.compute.model_hash(name)) is not None and accepted.accepts(name, h)
        ]
        if not models or live.body.security_frame.embedding_model not in self.compute.embedding_models():
            return  # we could not commit to an embedding others can check
        if self.committees is not None and self.committees.own_round(rid, now_ms()) is None:
            return  # not in the committee (yet): the ticker asks again as rounds widen
        live.inferring = True
        self._nursery.start_soon(self._infer, rid, live, models)

    async def _infer(self, rid: str, live: LiveRequest, models: list[str]) -> None:
        """Run our inference, then hand the output and its embedding to the machine."""
        assert self.inference is not None
        # Our output counts only if committed before the commit window closes.
        out = await self.inference.run(rid, live.body, models, live.machine.commit_close_ms / 1000)
        live.inferring = False
        if out is None or rid not in self._live:
            return
        live.own_model = out.model
        self.inference.record(rid, out)
        try:
            actions = live.machine.own_inference_done(
                out.output,
                out.vector,
                now_ms(),
                model=out.model,
                model_hash=out.model_hash,
                output_tokens=None if out.output_tokens is None else list(out.output_tokens),
            )
        except ValueError as e:  # a model the request does not accept: nothing to commit
            log.warning("own_inference_refused", request_id=rid, error=str(e))
            self.inference.failed(rid, str(e)[:500])
            return
        if live.machine.own is None:
            self.inference.failed(rid, "too late to commit")
        await self._apply(rid, actions)

    # ================================================================ actions

    async def _apply(self, rid: str, actions: list[q.Action], *, save_if_idle: bool = True) -> None:
        """Persist first (snapshot + outgoing frames), then publish, then mark sent."""
        if not actions:
            if save_if_idle:
                self._save(rid)
            return
        live = self._live.get(rid)
        if live is None:
            return
        outgoing: list[Staged] = []
        finished: q.Finished | None = None
        for a in actions:
            if isinstance(a, q.PublishCommit) and live.machine.own is not None:
                self.store.upsert_inference(rid, a.inference_id, state="committed", commit=a.commit)
            elif isinstance(a, q.PublishRevealRequest):
                live.last_rr_sent_ms = now_ms()
            elif isinstance(a, q.PublishReveal):
                self.store.upsert_inference(rid, a.inference_id, state="revealed")
                live.last_reveal_sent_ms = now_ms()
            elif isinstance(a, q.PublishRejection):
                metrics.REVEALS_VERIFIED.labels(verdict=a.reason).inc()
                self.events.emit(
                    "reveal_verified",
                    rid,
                    inference_id=a.inference_id,
                    node_id=a.node_id,
                    accepted=False,
                    reason=a.reason,
                )
            elif isinstance(a, q.RequestEmbedding):
                self.checks.start_verification(rid, live, a)
            elif isinstance(a, q.RequestRecheck):
                self.checks.start_recheck(rid, live, a)
            elif isinstance(a, q.CommitRefused):
                log.info("commit_refused", request_id=rid, node_id=a.node_id, reason=a.reason, detail=a.detail)
                self.events.emit("commit_refused", rid, node_id=a.node_id, reason=a.reason)
            elif isinstance(a, q.Finished):
                finished = a
            body = body_for(rid, a, node_id=self.node_id)
            if isinstance(body, wire.InferenceCommit) and self.committees is not None:
                body = body.model_copy(update=self.committees.commit_fields(rid))
            staged = self.outbox.stage(rid, body) if body is not None else None
            if staged is not None:
                outgoing.append(staged)
        self._save(rid)
        await self.outbox.flush(rid, outgoing)
        if finished is not None:
            await self._finish(rid, live, finished)

    def _save(self, rid: str) -> None:
        live = self._live.get(rid)
        if live is not None:
            self.store.save_quorum_state(rid, json.dumps(live.machine.to_dict()).encode())
            stage = stage_of(live)
            if stage != "done":
                self.store.set_stage(rid, stage)

    async def _finish(self, rid: str, live: LiveRequest, fin: q.Finished) -> None:
        out = self.results.finish(rid, live.packet.frame, live.machine, fin)
        self._live.pop(rid, None)
        if self.committees is not None:
            self.committees.close(rid)
        metrics.REQUESTS_ACTIVE.set(len(self._live))
        self.events.emit(
            "finished", rid, state=out.state, reason=out.reason, answer=out.answer, members=out.members
        )

    # ================================================================ resume

    async def _resume(self) -> None:
        """Rebuild every pending request from the store and carry on where we stopped."""
        now = now_ms()
        pending = self.store.pending_requests()
        for row in pending:
            try:
                pkt = wire.decode(row.frame, limits=self.config.limits, check_time=False)
            except wire.WireError as e:
                log.warning("stored_request_unreadable", request_id=row.request_id, error=str(e))
                continue
            assert isinstance(pkt.body, wire.InferenceRequest)
            snap = self.store.load_quorum_state(row.request_id)
            if snap is None:
                await self._on_request(pkt)
                continue
            inf = self.store.get_inference(row.request_id)
            live = LiveRequest.restore(pkt, snap, inf.model if inf is not None else None)
            machine = live.machine
            self._live[row.request_id] = live
            if self.committees is not None:
                self.committees.open(row.request_id, live.body, pkt.ts_ms, now)
            await self.outbox.resend_unsent(row.request_id)  # persisted, not sent before the stop
            # Verifications and re-checks that were in flight.
            for work in machine.pending_work():
                if isinstance(work, q.RequestEmbedding):
                    self.checks.start_verification(row.request_id, live, work)
                elif isinstance(work, q.RequestRecheck):
                    self.checks.start_recheck(row.request_id, live, work)
            if now < machine.ending_at_ms:
                self._start_inference(row.request_id, live)
            await self._apply(row.request_id, machine.tick(now))
        metrics.REQUESTS_ACTIVE.set(len(self._live))
        if pending:
            log.info("resumed", pending=len(pending), live=len(self._live))

    # ================================================================ what the API reads

    def get_request(self, request_id: str) -> dict[str, Any] | None:
        view = self.views.get(request_id, self._live.get(request_id))
        if view is not None and self.committees is not None:
            view["committee"] = self.committees.view(request_id)
        return view

    def committee_stats(self) -> dict[str, Any] | None:
        """This node's share of the work under sortition (None when it is off)."""
        return None if self.committees is None else self.committees.stats()

    def list_requests(self, limit: int = 50) -> list[dict[str, Any]]:
        return self.views.list(limit, self._live)

    def subscribe(self, request_id: str | None = None) -> AsyncIterator[dict[str, Any]]:
        return self.events.subscribe(request_id)

    def logs(self, last_n: int = 200, search: str | None = None) -> list[dict[str, Any]]:
        return self.events.logs(last_n, search)

    def recent_packets(self, limit: int = 100) -> list[dict[str, Any]]:
        return self.events.recent_packets(limit)

    def reputation(self) -> dict[str, dict[str, Any]]:
        return reputation_view(self.store)

    def queue_depth(self) -> int:
        return sum(1 for live in self._live.values() if live.inferring)

    @property
    def orphan_packets(self) -> int:
        """Orphan packets stored, as this node counts them (refreshed by each prune)."""
        return self.orphans.count
