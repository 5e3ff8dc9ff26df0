"""Prometheus metrics shared by every package of the daemon.

One module-level `REGISTRY` (not the prometheus-client global one) so tests that start
several apps in one process do not collide with library collectors, and `/metrics`
shows only rakis metrics plus process/platform info. Everybody imports the objects
below and increments them directly, e.g.::

    from node import metrics
    metrics.REQUESTS_FINISHED.labels(outcome="failed", reason="expired").inc()
    metrics.observe_generation(model, inference_result)   # TTFT, finish reasons
    metrics.GOSSIP_FRAMES_REJECTED.labels(reason=err.reason).inc()
    with metrics.CONSENSUS_PHASE_SECONDS.labels(phase="verify").time(): ...

Engine gauges and totals (queue depths, workers, tokens/s, KV-cache use, prefix-cache
hits, tokens generated) are read from the engines bound with `bind_engines` when
`/metrics` is scraped, so engine code needs no metrics calls. Label values must stay a small closed set (outcomes, reasons, packet types, model
names); never put request ids or peer ids in labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

# `*_created` series double the output and no rakis dashboard uses them.
disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

CONTENT_TYPE = CONTENT_TYPE_LATEST

# ---- requests (node/domain.py, node/api.py) ------------------------------------------
REQUESTS_SUBMITTED = Counter(
    "rakis_requests_submitted",
    "Signed inference requests submitted to this node's API, by verdict (accepted|rejected).",
    ["verdict"],
    registry=REGISTRY,
)
REQUESTS_REJECTED = Counter(
    "rakis_requests_rejected",
    "Requests refused at the API before gossip, by reason (wire reason or rejection code).",
    ["reason"],
    registry=REGISTRY,
)
REQUESTS_FINISHED = Counter(
    "rakis_requests_finished",
    "Requests that reached a final state, by outcome (succeeded|failed|expired) and reason "
    "(none|expired|not_enough_commits|not_enough_valid_reveals|no_cluster_of_needed_size|...).",
    ["outcome", "reason"],
    registry=REGISTRY,
)
REQUESTS_ACTIVE = Gauge(
    "rakis_requests_active",
    "Requests this node tracks that are not final yet.",
    registry=REGISTRY,
)
REQUEST_DURATION_SECONDS = Histogram(
    "rakis_request_duration_seconds",
    "Time from a request's creation to its final state, as seen by this node.",
    ["outcome"],
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
    registry=REGISTRY,
)

# ---- engine (engine/) -----------------------------------------------------------------
QUEUE_DEPTH = Gauge(
    "rakis_queue_depth",
    "Items waiting in a local queue (queue = llm|embedding|verification|...).",
    ["queue"],
    registry=REGISTRY,
)
WORKERS = Gauge(
    "rakis_workers",
    "Local engine workers by model and state (loading|idle|busy|stopped).",
    ["model", "state"],
    registry=REGISTRY,
)
PROMPT_TOKENS = Counter(
    "rakis_prompt_tokens",
    "Prompt tokens of finished local generations (see observe_generation).",
    ["model"],
    registry=REGISTRY,
)
TTFT_SECONDS = Histogram(
    "rakis_ttft_seconds",
    "Time to first token of local generations (see observe_generation).",
    ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
GENERATIONS = Counter(
    "rakis_generations",
    "Local generations finished, by finish reason (stop|length|abort|expired|error).",
    ["model", "finish_reason"],
    registry=REGISTRY,
)
# Read from the bound engines at scrape time (bind_engines): engine/ cannot import node/.
TOKENS_PER_SECOND = Gauge(
    "rakis_tokens_per_second",
    "Recent decode throughput of the local LLM workers of a model (10 s window, summed).",
    ["model"],
    registry=REGISTRY,
)
KV_CACHE_USAGE = Gauge(
    "rakis_kv_cache_usage_ratio",
    "Fraction of paged KV-cache blocks in use (0..1) per LLM worker.",
    ["model", "worker"],
    registry=REGISTRY,
)
PREFIX_CACHE_HIT_RATE = Gauge(
    "rakis_prefix_cache_hit_ratio",
    "Radix prefix-cache hit rate (hit tokens / queried tokens, 0..1) per model since its workers loaded.",
    ["model"],
    registry=REGISTRY,
)
EMBEDDINGS = Counter(
    "rakis_embeddings",
    "Texts embedded by the local embedding engine, by priority (consensus|ordinary).",
    ["priority"],
    registry=REGISTRY,
)

# ---- gossip (node/gossip.py) ----------------------------------------------------------
GOSSIP_FRAMES_IN = Counter(
    "rakis_gossip_frames_in",
    "Gossip frames received, by packet type ('unknown' before decoding).",
    ["type"],
    registry=REGISTRY,
)
GOSSIP_FRAMES_OUT = Counter(
    "rakis_gossip_frames_out",
    "Gossip frames published by this node, by packet type.",
    ["type"],
    registry=REGISTRY,
)
GOSSIP_FRAMES_REJECTED = Counter(
    "rakis_gossip_frames_rejected",
    "Gossip frames rejected before any work, by wire reason (too_large|bad_signature|...).",
    ["reason"],
    registry=REGISTRY,
)
GOSSIP_BYTES_IN = Counter("rakis_gossip_bytes_in", "Bytes of gossip frames received.", registry=REGISTRY)
GOSSIP_BYTES_OUT = Counter("rakis_gossip_bytes_out", "Bytes of gossip frames published.", registry=REGISTRY)
PEERS = Gauge("rakis_peers", "Peers currently known and connected.", registry=REGISTRY)

# ---- consensus (node/domain.py around consensus/) -------------------------------------
CONSENSUS_PHASE_SECONDS = Histogram(
    "rakis_consensus_phase_seconds",
    "Duration of each request phase on this node "
    "(queue|inference|embed|commit_wait|reveal_wait|verify|total).",
    ["phase"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
REVEALS_VERIFIED = Counter(
    "rakis_reveals_verified",
    "Reveals checked by this node, by verdict (accepted|<rejection reason>).",
    ["verdict"],
    registry=REGISTRY,
)

COMMITTEE_DECISIONS = Counter(
    "rakis_committee_decisions",
    "Requests this node saw under committee sortition, by its own part in them "
    "(selected: first round | widened: a later round | not_selected: never ran it).",
    ["outcome"],
    registry=REGISTRY,
)
COMMITS_IGNORED = Counter(
    "rakis_commits_ignored",
    "Commits this node did not count because their sender was outside the committee, by reason "
    "(not_in_committee|round_too_early|bad_claim).",
    ["reason"],
    registry=REGISTRY,
)

ORPHAN_PACKETS = Gauge(
    "rakis_orphan_packets",
    "Stored packets whose request this node has not seen yet (bounded by max_orphan_packets).",
    registry=REGISTRY,
)
ORPHAN_PACKETS_DROPPED = Counter(
    "rakis_orphan_packets_dropped",
    "Packets for unseen requests not stored because max_orphan_packets was reached.",
    registry=REGISTRY,
)
ORPHAN_PACKETS_PRUNED = Counter(
    "rakis_orphan_packets_pruned",
    "Stored packets for unseen requests deleted past orphan_packet_ttl_s or over the cap.",
    registry=REGISTRY,
)

# ---- HTTP (node/api.py) ---------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "rakis_http_requests",
    "HTTP requests served by the node API, by route template, method and status code.",
    ["route", "method", "status"],
    registry=REGISTRY,
)


# ---- engines: gauges refreshed and totals collected at scrape time -------------------

_bound: dict[str, Any] = {"llm": None, "embeddings": None}


def bind_engines(llm: Any, embeddings: Any) -> None:
    """Tell `render()` which engines to read (the API does this in create_app). One
    node per process, so the last binding wins."""
    _bound["llm"] = llm
    _bound["embeddings"] = embeddings


def _core_stats(llm: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """(worker_id, model, EngineCore.stats()) for each loaded LLM worker."""
    public = getattr(llm, "core_stats", None)
    if callable(public):
        return [(wid, st.get("model", "?"), st) for wid, st in public().items()]
    out = []
    # Fallback until LLMEngine exposes core_stats(): its workers hold EngineCore objects.
    for w in list(getattr(llm, "_workers", {}).values()):
        core = getattr(w, "core", None)
        if core is not None and hasattr(core, "stats"):
            out.append((w.worker_id, w.model, core.stats()))
    return out


def observe_generation(model: str, result: Any) -> None:
    """Record one finished local generation (an engine InferenceResult/GenerationResult)."""
    GENERATIONS.labels(model=model, finish_reason=result.finish_reason).inc()
    PROMPT_TOKENS.labels(model=model).inc(result.prompt_tokens)
    if result.ttft_s is not None:
        TTFT_SECONDS.labels(model=model).observe(result.ttft_s)


def _refresh_engine_gauges() -> None:
    llm, emb = _bound["llm"], _bound["embeddings"]
    if llm is not None:
        QUEUE_DEPTH.labels(queue="llm").set(llm.queue_depth())
        WORKERS.clear()
        for ws in llm.worker_states():
            WORKERS.labels(model=ws.model, state=ws.state).inc()
        KV_CACHE_USAGE.clear()
        speed: dict[str, float] = {}
        for wid, model, st in _core_stats(llm):
            total = st.get("kv_blocks_total") or 0
            KV_CACHE_USAGE.labels(model=model, worker=wid).set(
                st.get("kv_blocks_used", 0) / total if total else 0
            )
            speed[model] = speed.get(model, 0.0) + float(st.get("tokens_per_s") or 0.0)
        for model, tps in speed.items():
            TOKENS_PER_SECOND.labels(model=model).set(tps)
    if emb is not None:
        QUEUE_DEPTH.labels(queue="embedding").set(sum(emb.queue_depth().values()))
        for ws in emb.worker_states():
            WORKERS.labels(model=ws.model, state=ws.state).inc()


class _EngineTotals(Collector):
    """Cumulative engine counts summed over live workers (a worker unloaded takes its
    counts with it; Prometheus treats the drop as a counter reset)."""

    def collect(self) -> Iterator[Metric]:
        tokens = CounterMetricFamily(
            "rakis_tokens_generated",
            "Completion tokens generated by the local LLM workers.",
            labels=["model"],
        )
        queried = CounterMetricFamily(
            "rakis_prefix_cache_queried_tokens",
            "Prompt tokens looked up in the radix prefix cache.",
            labels=["model"],
        )
        hits = CounterMetricFamily(
            "rakis_prefix_cache_hit_tokens",
            "Prompt tokens served from the radix prefix cache.",
            labels=["model"],
        )
        per_model: dict[str, list[float]] = {}
        llm = _bound["llm"]
        if llm is not None:
            try:
                for _wid, model, st in _core_stats(llm):
                    acc = per_model.setdefault(model, [0.0, 0.0, 0.0])
                    acc[0] += st.get("generated_tokens", 0)
                    acc[1] += st.get("prefix_queries", 0)
                    acc[2] += st.get("prefix_hits", 0)
            except Exception:  # noqa: BLE001 - a scrape must never fail on engine state
                per_model = {}
        for model, (gen, q, h) in per_model.items():
            tokens.add_metric([model], gen)
            queried.add_metric([model], q)
            hits.add_metric([model], h)
        yield tokens
        yield queried
        yield hits

    def describe(self) -> Iterator[Metric]:
        return iter(())  # dynamic: nothing to check at registration


REGISTRY.register(_EngineTotals())


def refresh() -> None:
    """Update the engine-derived gauges now (render() does it; so does /v1/node)."""
    try:
        _refresh_engine_gauges()
    except Exception:  # noqa: BLE001 - stale gauges beat a failed scrape
        pass


def render() -> bytes:
    """The registry in Prometheus text exposition format (serve with `CONTENT_TYPE`)."""
    refresh()
    return generate_latest(REGISTRY)
