"""LLMEngine: pools of EngineCore workers per model, one deadline-ordered queue.

Seed 000's LLMEngine API (scaleLLMWorkers, runInference, getWorkerStates, ...) on
top of `engine.core.EngineCore`, where a worker is one loaded model plus its
continuous-batching scheduler thread. Each core batches many requests, so a
worker is *available* while it is loaded and has fewer running requests than its
batch capacity; the engine never gives a core more than that, and keeps the rest
in its own queue ordered by deadline (earliest first, seed 001). Expiry happens in
two places, both ending the stream with reason "expired": a request whose deadline
passes while it waits in that queue is finished there and never started; one that
already went to a core (queued there, running, or preempted) is aborted by the core's
scheduler at its next step, its KV blocks freed, with the tokens made so far.

Threads: one dispatcher thread owns all hand-offs to cores. Scheduler threads only
report through the stream listener: token events go straight to the caller's
mailbox, final results go to the dispatcher, which frees the worker slot, logs,
and only then passes the result on, so by the time a caller sees a stream end its
worker is already free. Listeners never take the engine lock, so a core that calls
them while holding its own lock cannot deadlock with the dispatcher calling
`core.submit`.

Async callers (trio in the daemon, asyncio elsewhere) receive events through an
`AsyncMailbox`, which wakes the waiting task via the loop's own thread-safe
callback; nothing polls.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from engine import devices
from engine.config import EngineConfig
from engine.engine_logs import EngineLog, LogEntry, LogType
from engine.quant import split_model_dtype
from engine.queues import AsyncMailbox, DeadlineQueue
from engine.recheck import RecheckTolerance, immediate_result
from engine.registry import ModelKind, ModelRegistry, UnknownModelError
from engine.types import (
    GenerationRequest,
    GenerationResult,
    RecheckRequest,
    RecheckResult,
    SamplingParams,
    TokenEvent,
)

PROGRESS_EVERY = 32  # tokens between progress log entries of one request


class NoWorkerError(RuntimeError):
    """None of a request's accepted models has a worker (loaded or loading)."""


@dataclass
class LLMRequest:
    """What a caller asks of the engine: a generation that any of `models` may run.

    Exactly one of `messages` (chat template applied), `prompt` or
    `prompt_token_ids`. `deadline` is `time.time()` seconds; past it the request
    is dropped from the queue (never started) or stopped (if running).
    """

    models: Sequence[str] | str
    messages: list[dict] | None = None
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    deadline: float | None = None
    request_id: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.models, str):
            self.models = (self.models,)
        self.models = tuple(self.models)
        if not self.request_id:
            self.request_id = uuid.uuid4().hex

    def validate(self) -> None:
        """Raise ValueError/TypeError naming the problem; nothing is queued."""
        if not self.models or not all(isinstance(m, str) and m for m in self.models):
            raise ValueError(f"models must be a non-empty list of model names, got {self.models!r}")
        given = [n for n in ("messages", "prompt", "prompt_token_ids") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of messages, prompt, prompt_token_ids (got {', '.join(given) or 'none'})"
            )
        if self.deadline is not None and (
            not isinstance(self.deadline, int | float) or not math.isfinite(self.deadline)
        ):
            raise ValueError(f"deadline must be time.time() seconds, got {self.deadline!r}")
        if not isinstance(self.sampling, SamplingParams):
            raise TypeError(f"sampling must be SamplingParams, got {type(self.sampling).__name__}")
        self.sampling.validate()


@dataclass(frozen=True)
class InferenceResult:
    """The outcome of one request; `finish_reason` is one of
    stop | length | abort | expired | error (never a silent loss)."""

    request_id: str
    model: str | None
    worker_id: str | None
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    queue_s: float  # time waiting in the engine's queue
    ttft_s: float | None  # from hand-off to the worker
    total_s: float  # from hand-off to the worker (0 when never started)
    error: str | None = None


@dataclass
class LLMWorkerState:
    worker_id: str
    model: str
    state: str  # loading | ready | draining | stopped | failed
    device: str
    capacity: int
    active_requests: int
    available: bool
    tokens_per_s: float | None
    requests_done: int
    tokens_done: int
    load_s: float | None
    error: str | None = None


@dataclass
class ModelAvailability:
    model: str
    workers: int  # loading + ready + draining
    loading: int
    ready: int
    available_workers: int  # ready and below batch capacity
    free_slots: int
    active_requests: int
    queued: int
    tokens_per_s: float | None


@dataclass(frozen=True)
class ModelChoice:
    """Input of `pick_model`: one accepted model's current state."""

    model: str
    available_workers: int
    tokens_per_s: float | None
    load: float  # running requests / capacity of its ready workers


def pick_model(options: Sequence[ModelChoice]) -> str | None:
    """Seed 001's choice: an available worker first, then measured speed, then load.

    A model not measured yet counts as fastest, so it gets measured once instead of
    never being tried; ties keep the request's own order of preference.
    """
    ranked = [
        (-(math.inf if o.tokens_per_s is None else o.tokens_per_s), o.load, i, o.model)
        for i, o in enumerate(options)
        if o.available_workers > 0
    ]
    return min(ranked)[3] if ranked else None


@dataclass(eq=False)
class _Worker:
    worker_id: str
    model: str
    device: str
    capacity: int = 1
    state: str = "loading"
    core: Any = None
    active: dict[str, _Job] = field(default_factory=dict)
    tokens_per_s: float | None = None
    requests_done: int = 0
    tokens_done: int = 0
    load_s: float | None = None
    error: str | None = None
    drained: threading.Event = field(default_factory=threading.Event)
    loaded: threading.Event = field(default_factory=threading.Event)  # load finished or failed

    @property
    def available(self) -> bool:
        return self.state == "ready" and len(self.active) < self.capacity


@dataclass(eq=False)
class _Job:
    req: LLMRequest
    accepted: tuple[str, ...]
    mailbox: AsyncMailbox
    submitted_at: float
    state: str = "queued"  # queued | running | done
    worker: _Worker | None = None
    started_at: float | None = None
    tokens: int = 0
    abort_reason: str | None = None
    result: InferenceResult | None = None


class InferenceStream:
    """Async iterator of a request's `TokenEvent`s; `result` is set when it ends.

    Use as `async with engine.run_inference(req) as s: async for ev in s: ...`;
    leaving the block early aborts the request so its worker slot is freed.
    """

    def __init__(self, engine: LLMEngine, job: _Job) -> None:
        self._engine = engine
        self._job = job
        self.result: InferenceResult | None = None

    @property
    def request_id(self) -> str:
        return self._job.req.request_id

    def __aiter__(self) -> InferenceStream:
        return self

    async def __anext__(self) -> TokenEvent:
        if self.result is not None:
            raise StopAsyncIteration
        item = await self._job.mailbox.get()
        if isinstance(item, InferenceResult):
            self.result = item
            raise StopAsyncIteration
        return item

    async def collect(self) -> InferenceResult:
        """Wait for the end, discarding remaining token events."""
        async for _ in self:
            pass
        assert self.result is not None
        return self.result

    async def aclose(self) -> None:
        """Abort if still running and wait (shielded, bounded) for the final result."""
        if self.result is not None:
            return
        self._engine.abort(self.request_id, reason="stream closed by caller")
        with anyio.CancelScope(shield=True), anyio.move_on_after(30):
            await self.collect()

    async def __aenter__(self) -> InferenceStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class LLMEngine:
    """Worker pools per model name, a deadline queue, logs. Thread-safe."""

    def __init__(
        self,
        registry: ModelRegistry | None = None,
        *,
        device: str | None = None,
        dtype: str | None = None,
        num_threads: int | None = None,
        config: EngineConfig | None = None,
        log_size: int = 10_000,
    ) -> None:
        """Every worker is built from `config` (`scale_workers` may override it per
        pool). `dtype` may also name a weight mode, `int8` or `q4`: fp32 compute with
        quantized projections (CPU only)."""
        self.registry = registry or ModelRegistry()
        self.device = devices.resolve_device(device)
        compute_dtype, weight_mode = split_model_dtype(dtype)
        self.dtype = devices.resolve_dtype(self.device, compute_dtype)
        self.num_threads = num_threads
        self.config = config or EngineConfig()
        if weight_mode not in (None, "none"):
            self.config = self.config.replace(weight_mode=weight_mode)
        self._log = EngineLog(log_size)
        self._lock = threading.RLock()
        self._queue: DeadlineQueue[_Job] = DeadlineQueue()
        self._jobs: dict[str, _Job] = {}
        self._workers: dict[str, _Worker] = {}
        self._ids = itertools.count(1)
        self._done: queue.SimpleQueue[tuple[_Job, GenerationResult]] = queue.SimpleQueue()
        self._kick = threading.Event()
        self._closed = False
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="llm-dispatch", daemon=True)
        self._dispatcher.start()

    # ---- pools -------------------------------------------------------------------

    async def scale_workers(
        self,
        model: str,
        n: int,
        *,
        drain_timeout: float | None = 60.0,
        config: EngineConfig | None = None,
    ) -> list[str]:
        """Load or unload workers so `model` has `n`; returns its worker ids.

        Unloading picks the least busy workers, stops giving them requests, waits
        up to `drain_timeout` seconds for their running requests to finish, then
        aborts what is left (finish_reason "abort", error "worker unloaded").
        Queued requests that no remaining worker can serve are aborted the same
        way. Nothing is dropped without a result. Loads and unloads are shielded
        from cancellation (a half-done one would leave a core running unseen), so
        `drain_timeout=None` waits for running requests however long they take.
        Raises UnknownModelError for an unknown name, RuntimeError when a load fails
        (after the rest of the pool has settled; the failed worker is gone).
        """
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"worker count must be an int >= 0, got {n!r}")
        self._check_open()
        self.registry.entry(model, ModelKind.LLM)  # unknown names fail before any work
        path: Any = None
        if n > 0:
            path = await anyio.to_thread.run_sync(self.registry.resolve, model, ModelKind.LLM)
        opts = (config or self.config).core_kwargs()
        with self._lock:
            current = [
                w for w in self._workers.values() if w.model == model and w.state in ("loading", "ready")
            ]
            new: list[_Worker] = []
            victims: list[_Worker] = []
            if len(current) < n:
                for _ in range(n - len(current)):
                    w = _Worker(worker_id=f"{model}#{next(self._ids)}", model=model, device=self.device)
                    self._workers[w.worker_id] = w
                    new.append(w)
            elif len(current) > n:
                # Loading workers first (nothing runs there), then the least busy.
                order = sorted(current, key=lambda w: (w.state != "loading", len(w.active)))
                victims = order[: len(current) - n]
                for w in victims:
                    w.state = "draining"
                    if not w.active:
                        w.drained.set()
        errors: list[str] = []
        # Shielded: a half-done load or unload would leave a core running unseen.
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for w in new:
                    tg.start_soon(self._load_worker, w, path, opts, errors)
                for w in victims:
                    tg.start_soon(self._unload_worker, w, drain_timeout)
        self._abort_unservable()
        self._kick.set()
        if errors:
            raise RuntimeError(f"could not load {len(errors)} worker(s) of {model!r}: " + "; ".join(errors))
        with self._lock:
            return sorted(
                w.worker_id
                for w in self._workers.values()
                if w.model == model and w.state in ("loading", "ready")
            )

    async def _load_worker(self, w: _Worker, path: Any, opts: dict[str, Any], errors: list[str]) -> None:
        t0 = time.perf_counter()
        try:
            core = await anyio.to_thread.run_sync(self._build_core, w, path, opts)
        except Exception as exc:
            with self._lock:
                w.state, w.error = "failed", f"{type(exc).__name__}: {exc}"
                self._workers.pop(w.worker_id, None)
            w.drained.set()  # a concurrent unload of this worker must not wait forever
            w.loaded.set()
            self._log.append(LogType.ERROR, worker_id=w.worker_id, model=w.model, message=w.error)
            errors.append(f"{w.worker_id}: {w.error}")
            return
        with self._lock:
            w.core = core
            w.capacity = int(getattr(core, "max_batch_size", opts.get("max_batch_size", 32)))
            w.load_s = time.perf_counter() - t0
            if w.state == "draining":  # scaled down again while loading
                w.drained.set()
            else:
                w.state = "ready"
        w.loaded.set()
        self._log.append(
            LogType.LOAD,
            worker_id=w.worker_id,
            model=w.model,
            message=f"loaded from {path} on {self.device} in {w.load_s:.2f}s (capacity {w.capacity})",
        )
        self._kick.set()

    def _build_core(self, w: _Worker, path: Any, opts: dict[str, Any]) -> Any:
        from engine.core import EngineCore

        self.registry.weights_hash(w.model, ModelKind.LLM)  # once per model, cached on disk

        core = EngineCore(
            str(path),
            device=self.device,
            dtype=self.dtype,
            num_threads=self.num_threads,
            name=w.worker_id,
            **opts,
        )
        core.start()
        return core

    async def _unload_worker(self, w: _Worker, drain_timeout: float | None) -> None:
        # A worker still loading is stopped once its load finishes (it runs nothing yet).
        await anyio.to_thread.run_sync(w.loaded.wait, abandon_on_cancel=True)
        await anyio.to_thread.run_sync(w.drained.wait, drain_timeout, abandon_on_cancel=True)
        with self._lock:
            left = list(w.active.values())
            for job in left:
                job.abort_reason = "worker unloaded"
                w.core.abort(job.req.request_id)
        if left:
            await anyio.to_thread.run_sync(w.drained.wait, 30.0, abandon_on_cancel=True)
        core = w.core
        if core is not None:
            await anyio.to_thread.run_sync(lambda: core.stop(abort_pending=True))
        # stop() answers any request the core still held; settle anything missed.
        await anyio.to_thread.run_sync(self._settle_worker, w)
        self._log.append(
            LogType.UNLOAD,
            worker_id=w.worker_id,
            model=w.model,
            message=f"unloaded after {w.requests_done} requests" + (f", aborted {len(left)}" if left else ""),
        )

    def _settle_worker(self, w: _Worker) -> None:
        deadline = time.monotonic() + 5.0
        while True:
            with self._lock:
                if not w.active or time.monotonic() > deadline:
                    for job in list(w.active.values()):
                        self._finish(job, None, "abort", "worker unloaded")
                    w.state = "stopped"
                    w.core = None
                    self._workers.pop(w.worker_id, None)
                    return
            w.drained.wait(0.05)

    def _abort_unservable(self) -> None:
        """Queued jobs none of whose accepted models has a worker any more."""
        with self._lock:
            served = {w.model for w in self._workers.values() if w.state in ("loading", "ready")}
            gone = self._queue.take(lambda j: not served.intersection(j.accepted))
            for job in gone:
                self._finish(job, None, "abort", f"no worker left for models {', '.join(job.accepted)}")

    def worker_states(self) -> list[LLMWorkerState]:
        with self._lock:
            return [
                LLMWorkerState(
                    worker_id=w.worker_id,
                    model=w.model,
                    state=w.state,
                    device=w.device,
                    capacity=w.capacity,
                    active_requests=len(w.active),
                    available=w.available,
                    tokens_per_s=w.tokens_per_s,
                    requests_done=w.requests_done,
                    tokens_done=w.tokens_done,
                    load_s=w.load_s,
                    error=w.error,
                )
                for w in sorted(self._workers.values(), key=lambda w: w.worker_id)
            ]

    def worker_availability(self, models: Iterable[str] | None = None) -> dict[str, ModelAvailability]:
        """Per model: workers loading/ready, available ones, free slots, queue.
        Models with no workers are reported with zeros (no error: remote requests
        name models this node may not have)."""
        if isinstance(models, str):
            models = [models]
        with self._lock:
            names = (
                list(dict.fromkeys(models))
                if models is not None
                else sorted({w.model for w in self._workers.values()})
            )
            return {m: self._availability(m) for m in names}

    def _availability(self, model: str) -> ModelAvailability:
        ws = [w for w in self._workers.values() if w.model == model]
        ready = [w for w in ws if w.state == "ready"]
        return ModelAvailability(
            model=model,
            workers=sum(w.state in ("loading", "ready", "draining") for w in ws),
            loading=sum(w.state == "loading" for w in ws),
            ready=len(ready),
            available_workers=sum(w.available for w in ready),
            free_slots=sum(max(0, w.capacity - len(w.active)) for w in ready),
            active_requests=sum(len(w.active) for w in ws),
            queued=sum(model in j.accepted for j in self._queue),
            tokens_per_s=self._model_speed(model),
        )

    def _model_speed(self, model: str) -> float | None:
        rates = [w.tokens_per_s for w in self._workers.values() if w.model == model and w.tokens_per_s]
        return sum(rates) / len(rates) if rates else None

    def core_stats(self) -> dict[str, dict[str, Any]]:
        """`EngineCore.stats()` of each loaded worker, by worker id (for metrics).

        `model` is the registry name (the core itself is named after the worker).
        """
        with self._lock:
            cores = [(w.worker_id, w.model, w.core) for w in self._workers.values() if w.core is not None]
        out: dict[str, dict[str, Any]] = {}
        for worker_id, model, core in cores:
            try:
                st = dict(core.stats())
            except Exception as exc:  # a stopping core must not break a metrics scrape
                st = {"error": f"{type(exc).__name__}: {exc}"}
            st["model"], st["worker_id"] = model, worker_id
            out[worker_id] = st
        return out

    def model_hashes(self) -> dict[str, str]:
        """{model name: "sha256:<hex>"} of the weights of every model with a ready
        worker (computed at load, see ModelRegistry.weights_hash)."""
        return {m: self.registry.weights_hash(m, ModelKind.LLM) for m in self.available_models()}

    def available_models(self) -> list[str]:
        """Models with at least one loaded worker (what this node can run now)."""
        with self._lock:
            return sorted({w.model for w in self._workers.values() if w.state == "ready"})

    def queue_depth(self) -> int:
        with self._lock:
            return len(self._queue)

    # ---- requests -----------------------------------------------------------------

    def run_inference(self, request: LLMRequest) -> InferenceStream:
        """Queue `request` now and return its token stream (`async for` it).

        Must be called from inside an anyio-compatible event loop (trio or
        asyncio). Raises at once for a bad request, a duplicate id, models this
        node does not know, or when no accepted model has any worker.
        """
        request.validate()
        known = tuple(m for m in request.models if m in self.registry)
        if not known:
            raise UnknownModelError(", ".join(request.models), self.registry.names(ModelKind.LLM))
        job = _Job(req=request, accepted=known, mailbox=AsyncMailbox(), submitted_at=time.time())
        with self._lock:
            self._check_open()
            if request.request_id in self._jobs:
                raise ValueError(f"request id {request.request_id!r} is already queued or running")
            if not any(w.model in known and w.state in ("loading", "ready") for w in self._workers.values()):
                raise NoWorkerError(
                    f"no worker for any of the accepted models {', '.join(known)}; "
                    f"loaded models: {', '.join(self.available_models()) or 'none'}"
                )
            self._jobs[request.request_id] = job
            self._queue.push(job, deadline=request.deadline)
        self._log.append(
            LogType.QUEUED,
            request_id=request.request_id,
            message=f"accepted models {', '.join(known)}",
            data={"deadline": request.deadline},
        )
        self._kick.set()
        return InferenceStream(self, job)

    async def recheck(
        self, requests: Sequence[RecheckRequest], *, tolerance: RecheckTolerance | None = None
    ) -> list[RecheckResult]:
        """Re-check revealed outputs against their model (proof of inference).

        Each request names its `model` (a registry name) and carries the prompt as
        generation got it, the revealed output (token ids or text), and the
        producer's sampling params and seed. They run on ready workers of their
        model as teacher-forced prefill passes, batched together and admitted ahead
        of normal generation, sharing the prompt's prefix-cache blocks; they bypass
        the generation queue and take no generation slot. Returns one RecheckResult
        per request, in order. A request that cannot be checked here (no ready
        worker of its model, a malformed request, deadline, abort, engine error)
        gets `reason="unavailable"` (`checked` False) with `error` saying why: that
        is not a verdict on the output. Cancelling the caller aborts the passes.
        """
        reqs = list(requests)
        if not reqs:
            return []
        self._check_open()
        mailbox: AsyncMailbox[tuple[int, RecheckResult]] = AsyncMailbox()
        results: list[RecheckResult | None] = [None] * len(reqs)
        submitted: list[tuple[Any, str]] = []

        def submit_all() -> None:
            for i, req in enumerate(reqs):
                rid = req.request_id or f"recheck-{uuid.uuid4().hex[:12]}"
                core = self._recheck_core(req.model)
                if core is None:
                    results[i] = immediate_result(
                        rid, "unavailable", error=f"no ready worker of model {req.model!r}"
                    )
                    continue
                internal = dataclasses.replace(req, request_id=f"rc{next(self._ids)}-{rid}")
                try:
                    stream = core.submit_recheck(internal, tolerance)
                except (ValueError, TypeError) as exc:
                    results[i] = immediate_result(rid, "unavailable", error=f"bad_request: {exc}")
                    continue
                submitted.append((core, internal.request_id))
                stream.add_listener(
                    lambda ev, i=i, rid=rid: (
                        mailbox.put((i, dataclasses.replace(ev, request_id=rid)))
                        if isinstance(ev, RecheckResult)
                        else None
                    )
                )

        await anyio.to_thread.run_sync(submit_all)
        pending = sum(r is None for r in results)
        try:
            while pending:
                i, res = await mailbox.get()
                if results[i] is None:
                    results[i] = res
                    pending -= 1
        finally:
            if pending:
                for core, internal_id in submitted:
                    core.abort(internal_id)
        for res in results:
            assert res is not None
            self._log.append(
                LogType.RECHECK,
                request_id=res.request_id,
                message=f"passed={res.passed} reason={res.reason}" + (f": {res.error}" if res.error else ""),
                tokens=res.positions,
                data={"suspect": res.suspect_positions, "log_likelihood": res.log_likelihood},
            )
        return results  # type: ignore[return-value]

    def _recheck_core(self, model: str | None) -> Any:
        """The least busy ready core of `model` (None when there is none)."""
        with self._lock:
            ready = [w for w in self._workers.values() if w.model == model and w.state == "ready" and w.core]
            if not ready:
                return None
            return min(ready, key=lambda w: (len(w.active) / w.capacity, w.worker_id)).core

    async def run_inference_non_streaming(self, request: LLMRequest) -> InferenceResult:
        """Run `request` and return its final result (see InferenceResult)."""
        async with self.run_inference(request) as stream:
            return await stream.collect()

    def abort(self, request_id: str, *, reason: str = "aborted by caller") -> bool:
        """Stop a queued or running request; its stream ends with finish_reason
        "abort". False when the id is unknown or already finished."""
        with self._lock:
            job = self._jobs.get(request_id)
            if job is None or job.state == "done":
                return False
            if job.state == "queued":
                self._queue.remove(job)
                self._finish(job, None, "abort", reason)
                return True
            job.abort_reason = reason
            core = job.worker.core if job.worker else None
        if core is not None:
            core.abort(request_id)
        return True

    # ---- dispatcher -----------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        while True:
            timeout = None
            with self._lock:
                self._drain_done()
                if self._closed:
                    return
                self._expire(time.time())
                self._dispatch()
                earliest = self._queue.earliest_deadline()
                if earliest is not None:
                    timeout = max(0.0, earliest - time.time()) + 0.001
            self._kick.wait(timeout)
            self._kick.clear()

    def _drain_done(self) -> None:
        while True:
            try:
                job, gen = self._done.get_nowait()
            except queue.Empty:
                return
            if job.state != "done":
                self._finish(job, gen, gen.finish_reason, gen.error)

    def _expire(self, now: float) -> None:
        for job in self._queue.pop_expired(now):
            self._finish(job, None, "expired", "deadline passed while queued; never started")

    def _dispatch(self) -> None:
        def select(job: _Job) -> bool:
            worker = self._choose_worker(job.accepted)
            if worker is None:
                return False
            self._start(job, worker)
            return True

        self._queue.take(select)

    def _choose_worker(self, accepted: tuple[str, ...]) -> _Worker | None:
        options = []
        for m in accepted:
            ready = [w for w in self._workers.values() if w.model == m and w.state == "ready"]
            cap = sum(w.capacity for w in ready)
            options.append(
                ModelChoice(
                    model=m,
                    available_workers=sum(w.available for w in ready),
                    tokens_per_s=self._model_speed(m),
                    load=(sum(len(w.active) for w in ready) / cap) if cap else 1.0,
                )
            )
        model = pick_model(options)
        if model is None:
            return None
        free = [w for w in self._workers.values() if w.model == model and w.available]
        return min(free, key=lambda w: (len(w.active) / w.capacity, -(w.tokens_per_s or 0.0), w.worker_id))

    def _start(self, job: _Job, worker: _Worker) -> None:
        req = job.req
        gen_req = GenerationRequest(
            request_id=req.request_id,
            sampling=req.sampling,
            messages=req.messages,
            prompt=req.prompt,
            prompt_token_ids=req.prompt_token_ids,
            deadline=req.deadline,
        )
        job.state, job.worker, job.started_at = "running", worker, time.time()
        worker.active[req.request_id] = job
        worker.drained.clear()
        self._log.append(
            LogType.START,
            worker_id=worker.worker_id,
            model=worker.model,
            request_id=req.request_id,
            message=f"after {job.started_at - job.submitted_at:.3f}s in queue",
        )
        try:
            stream = worker.core.submit(gen_req)
        except Exception as exc:
            self._finish(job, None, "error", f"{type(exc).__name__}: {exc}")
            return
        stream.add_listener(lambda ev, job=job: self._on_event(job, ev))

    def _on_event(self, job: _Job, ev: Any) -> None:
        """Scheduler thread. Never takes the engine lock (see module doc)."""
        if isinstance(ev, GenerationResult):
            self._done.put((job, ev))
            self._kick.set()
            return
        job.tokens += 1
        job.mailbox.put(ev)
        if job.tokens % PROGRESS_EVERY == 0 and job.worker is not None:
            elapsed = time.time() - (job.started_at or time.time())
            self._log.append(
                LogType.PROGRESS,
                worker_id=job.worker.worker_id,
                model=job.worker.model,
                request_id=job.req.request_id,
                tokens=job.tokens,
                tokens_per_s=job.tokens / elapsed if elapsed > 0 else None,
            )

    def _finish(self, job: _Job, gen: GenerationResult | None, finish_reason: str, error: str | None) -> None:
        """Under the lock: record the outcome, free the slot, log, tell the caller."""
        w = job.worker
        if finish_reason == "abort" and job.abort_reason:
            error = job.abort_reason
        now = time.time()
        queue_s = (job.started_at or now) - job.submitted_at
        result = InferenceResult(
            request_id=job.req.request_id,
            model=w.model if w else None,
            worker_id=w.worker_id if w else None,
            text=gen.text if gen else "",
            token_ids=list(gen.token_ids) if gen else [],
            finish_reason=finish_reason,
            prompt_tokens=gen.prompt_tokens if gen else 0,
            completion_tokens=gen.completion_tokens if gen else 0,
            cached_tokens=gen.cached_tokens if gen else 0,
            queue_s=queue_s,
            ttft_s=gen.ttft_s if gen else None,
            total_s=gen.total_s if gen else 0.0,
            error=error,
        )
        job.state, job.result = "done", result
        self._jobs.pop(job.req.request_id, None)
        rate = None
        if w is not None:
            w.active.pop(job.req.request_id, None)
            if not w.active and w.state in ("draining", "stopped"):
                w.drained.set()
            if gen is not None and gen.completion_tokens > 1:
                decode_s = gen.total_s - (gen.ttft_s or 0.0)
                if decode_s > 0:
                    rate = (gen.completion_tokens - 1) / decode_s
                    w.tokens_per_s = rate if w.tokens_per_s is None else 0.8 * w.tokens_per_s + 0.2 * rate
            w.requests_done += 1
            w.tokens_done += result.completion_tokens
        log_type = {
            "stop": LogType.FINISH,
            "length": LogType.FINISH,
            "abort": LogType.ABORT,
            "expired": LogType.EXPIRED,
        }.get(finish_reason, LogType.ERROR)
        self._log.append(
            log_type,
            worker_id=w.worker_id if w else None,
            model=w.model if w else None,
            request_id=job.req.request_id,
            message=f"finish_reason={finish_reason}" + (f": {error}" if error else ""),
            tokens=result.completion_tokens,
            tokens_per_s=rate,
        )
        job.mailbox.put(result)
        self._kick.set()

    # ---- logs and lifecycle ------------------------------------------------------------

    def logs(self, last_n: int | None = 100) -> list[LogEntry]:
        """The `last_n` most recent log entries, oldest first."""
        return self._log.last(last_n)

    def search_logs(
        self,
        *,
        type: LogType | str | Iterable[LogType | str] | None = None,
        worker_id: str | None = None,
        request_id: str | None = None,
        model: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[LogEntry]:
        """Entries matching all given filters (see EngineLog.search)."""
        return self._log.search(
            type=type, worker_id=worker_id, request_id=request_id, model=model, since=since, limit=limit
        )

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the LLM engine is closed")

    def close(self) -> None:
        """Abort everything queued or running (explicitly), stop all workers."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for job in self._queue.drain():
                self._finish(job, None, "abort", "engine closed")
            workers = list(self._workers.values())
        for w in workers:
            if w.core is not None:
                for rid in list(w.active):
                    w.core.abort(rid)
                w.core.stop(abort_pending=True)
        self._kick.set()
        self._dispatcher.join(timeout=10)
        with self._lock:
            self._drain_done()
            for job in list(self._jobs.values()):
                self._finish(job, None, "abort", "engine closed")
            for w in workers:
                w.state, w.core = "stopped", None
            self._workers.clear()

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.close)

    async def __aenter__(self) -> LLMEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
