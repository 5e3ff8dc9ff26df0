"""Embedding workers: sentence-transformers models behind one priority queue.

Consensus depends on every node embedding revealed outputs quickly, so the queue
is ordered by (priority class, deadline): `Priority.CONSENSUS` jobs always run
before `Priority.NORMAL` ones, earliest deadline first within a class. Each worker
is a thread with its own model instance; it takes the head job for its model plus
the following queued jobs of the same model and priority class (up to
`max_batch_texts` texts) and encodes them in one call. A batch never mixes classes,
so verification work is never slowed down by ordinary work riding along.

Jobs whose deadline has passed are never started: a worker drops them when it
meets them, and the waiting caller drops its own job when its deadline arrives
(also when no worker exists for the model), raising `JobExpiredError`.

Vectors are exactly what `SentenceTransformer.encode` returns, as float32; for
all-MiniLM-L6-v2 that is L2-normalised because its pipeline ends in a Normalize
module. `EmbeddingResult.normalized` says which for any model.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import anyio
import numpy as np

from engine import devices
from engine.engine_logs import EngineLog, LogEntry, LogType
from engine.queues import AsyncMailbox, DeadlineQueue
from engine.registry import DEFAULT_EMBEDDING, ModelKind, ModelRegistry

MAX_TEXTS_PER_JOB = 4096


class Priority(IntEnum):
    """Lower runs first."""

    CONSENSUS = 0
    NORMAL = 1


class EngineError(RuntimeError):
    """Base class of errors an engine reports for one job or request."""


class JobExpiredError(EngineError):
    """The job's deadline passed before a worker started it; it was dropped."""


class EngineClosedError(EngineError):
    """The engine was closed while the job was waiting."""


@dataclass(frozen=True)
class EmbeddingResult:
    model: str
    vectors: np.ndarray  # float32 [n, d]
    normalized: bool  # True when every row has unit L2 norm by construction
    worker_id: str
    queue_s: float  # submit -> batch start
    compute_s: float  # encode time of the whole batch this job rode in

    @property
    def binary(self) -> np.ndarray:
        """`np.packbits(v > 0, axis=1)`: uint8 [n, ceil(d/8)], the commit input."""
        return np.packbits(self.vectors > 0, axis=1)


@dataclass(eq=False)
class _Job:
    job_id: str
    model: str
    texts: list[str]
    priority: Priority
    deadline: float | None
    submitted_at: float
    mailbox: AsyncMailbox[EmbeddingResult | BaseException]
    started: bool = False


@dataclass
class EmbeddingWorkerState:
    worker_id: str
    model: str
    state: str  # loading | ready | busy | stopping | stopped | failed
    device: str
    jobs_done: int
    texts_done: int
    texts_per_s: float | None
    error: str | None = None


@dataclass(eq=False)
class _Worker:
    worker_id: str
    model: str
    device: str
    st_model: Any = None
    thread: threading.Thread | None = None
    state: str = "loading"
    stop_requested: bool = False
    jobs_done: int = 0
    texts_done: int = 0
    texts_per_s: float | None = None
    error: str | None = None
    normalized: bool = False
    stopped: threading.Event = field(default_factory=threading.Event)


def _has_normalize(st_model: Any) -> bool:
    from sentence_transformers.models import Normalize

    return any(isinstance(m, Normalize) for m in st_model.modules())


class EmbeddingEngine:
    """Pools of sentence-transformers workers per model, fed by one priority queue."""

    def __init__(
        self,
        registry: ModelRegistry | None = None,
        *,
        device: str | None = None,
        dtype: str | None = "float32",
        max_batch_texts: int = 64,
        normalize: bool = False,
        log_size: int = 10_000,
        openmp_threads: int | None = None,
    ) -> None:
        """`dtype` defaults to float32 on every device: nodes compare binary
        embeddings across machines, and half precision flips more sign bits.
        `normalize=True` forces unit-norm vectors for models that lack a Normalize
        module (it changes nothing for MiniLM). `openmp_threads` sets each worker
        thread's own torch thread count (the daemon passes 1, so that the LLM engine's
        team is the only one: `devices.own_openmp_team`); None keeps torch's count."""
        if max_batch_texts < 1:
            raise ValueError(f"max_batch_texts must be >= 1, got {max_batch_texts}")
        self.registry = registry or ModelRegistry()
        self.device = devices.resolve_device(device)
        self.dtype = devices.resolve_dtype(self.device, dtype)
        self.max_batch_texts = max_batch_texts
        self.normalize = normalize
        if openmp_threads is not None and openmp_threads < 1:
            raise ValueError(f"openmp_threads must be >= 1, got {openmp_threads}")
        self.openmp_threads = openmp_threads
        self._log = EngineLog(log_size)
        self._cond = threading.Condition()
        self._queue: DeadlineQueue[_Job] = DeadlineQueue()
        self._workers: dict[str, _Worker] = {}
        self._ids = itertools.count(1)
        self._closed = False

    # ---- pool management -------------------------------------------------

    async def scale_workers(self, model: str = DEFAULT_EMBEDDING, n: int = 1) -> list[str]:
        """Load or stop workers so `model` has `n`; returns the model's worker ids.

        Loading runs in a thread (it takes seconds). A stopped worker finishes the
        batch it is encoding; queued jobs stay queued for the remaining workers.
        """
        if n < 0:
            raise ValueError(f"worker count must be >= 0, got {n}")
        self._check_open()
        path = await anyio.to_thread.run_sync(self.registry.resolve, model, ModelKind.EMBEDDING)
        # Decide and register under one lock so concurrent calls agree on the count.
        with self._cond:
            current = [w for w in self._workers.values() if w.model == model and not w.stop_requested]
            new = [self._new_worker(model) for _ in range(n - len(current))]
            # Stop idle (and still loading) workers first so running batches finish undisturbed.
            victims = sorted(current, key=lambda w: w.state == "busy")[: max(0, len(current) - n)]
            for w in victims:
                w.stop_requested = True
                w.state = "stopping"
            self._cond.notify_all()
        errors: list[str] = []
        with anyio.CancelScope(shield=True):  # a half-done load would leave a thread unseen
            for w in new:
                try:
                    await anyio.to_thread.run_sync(self._load_and_start, w, str(path))
                except Exception as exc:
                    errors.append(f"{w.worker_id}: {type(exc).__name__}: {exc}")
            for w in victims:
                await anyio.to_thread.run_sync(w.stopped.wait)
        if errors:
            raise RuntimeError(f"could not load {len(errors)} worker(s) of {model!r}: " + "; ".join(errors))
        with self._cond:
            return sorted(
                w.worker_id for w in self._workers.values() if w.model == model and not w.stop_requested
            )

    def _new_worker(self, model: str) -> _Worker:
        w = _Worker(worker_id=f"emb-{model}-{next(self._ids)}", model=model, device=self.device)
        with self._cond:
            self._workers[w.worker_id] = w
        return w

    def _load_and_start(self, w: _Worker, path: str) -> None:
        from sentence_transformers import SentenceTransformer

        t0 = time.perf_counter()
        try:
            self.registry.weights_hash(w.model, ModelKind.EMBEDDING)  # once per model, cached on disk
            st = SentenceTransformer(path, device=self.device, local_files_only=True)
            st = st.to(self.dtype)
            st.eval()
        except Exception as exc:
            with self._cond:
                w.state, w.error = "failed", f"{type(exc).__name__}: {exc}"
                del self._workers[w.worker_id]
            w.stopped.set()
            self._log.append(LogType.ERROR, worker_id=w.worker_id, model=w.model, message=w.error)
            raise
        w.st_model = st
        w.normalized = self.normalize or _has_normalize(st)
        w.thread = threading.Thread(target=self._worker_loop, args=(w,), name=w.worker_id, daemon=True)
        with self._cond:
            w.state = "ready"
            self._cond.notify_all()
        w.thread.start()
        self._log.append(
            LogType.LOAD,
            worker_id=w.worker_id,
            model=w.model,
            message=f"loaded from {path} on {self.device} in {time.perf_counter() - t0:.2f}s",
        )

    def worker_states(self) -> list[EmbeddingWorkerState]:
        with self._cond:
            return [
                EmbeddingWorkerState(
                    w.worker_id, w.model, w.state, w.device, w.jobs_done, w.texts_done, w.texts_per_s, w.error
                )
                for w in self._workers.values()
            ]

    def queue_depth(self) -> dict[str, int]:
        """Queued jobs per model (not counting running batches)."""
        with self._cond:
            out: dict[str, int] = {}
            for job in self._queue:
                out[job.model] = out.get(job.model, 0) + 1
            return out

    def model_hashes(self) -> dict[str, str]:
        """{model name: "sha256:<hex>"} of every model with a ready worker."""
        return {m: self.registry.weights_hash(m, ModelKind.EMBEDDING) for m in self.available_models()}

    def available_models(self) -> list[str]:
        with self._cond:
            return sorted({w.model for w in self._workers.values() if w.state in ("ready", "busy")})

    # ---- embedding --------------------------------------------------------

    async def embed(
        self,
        texts: Sequence[str],
        *,
        model: str = DEFAULT_EMBEDDING,
        priority: Priority = Priority.NORMAL,
        deadline: float | None = None,
    ) -> EmbeddingResult:
        """Embed `texts`; deadline is `time.time()` seconds. Queues even while the
        model has no worker (one may be loading); the deadline bounds the wait."""
        job = self._make_job(texts, model, priority, deadline)
        with self._cond:
            self._check_open()
            self._queue.push(job, deadline=deadline, priority=int(job.priority))
            self._cond.notify_all()
        try:
            item: EmbeddingResult | BaseException | None = None
            with anyio.move_on_after(math.inf if deadline is None else max(0.0, deadline - time.time())):
                item = await job.mailbox.get()
            if item is None:
                item = self._expire_waiting(job) or await job.mailbox.get()
        finally:
            with self._cond:
                self._queue.remove(job)  # cancelled while queued: never run it
        if isinstance(item, BaseException):
            raise item
        return item

    def _expire_waiting(self, job: _Job) -> JobExpiredError | None:
        """At the caller's deadline: drop the job if still queued. None when a
        worker already has it (its result, or its expiry, is on the way)."""
        with self._cond:
            queued = self._queue.remove(job)
        if not queued:
            return None
        self._log.append(
            LogType.EXPIRED, model=job.model, request_id=job.job_id, message="deadline passed in queue"
        )
        return JobExpiredError(
            f"embedding job {job.job_id} expired after {time.time() - job.submitted_at:.3f}s in the "
            f"queue (deadline {job.deadline:.3f}); it was not started"
        )

    def _make_job(self, texts: Sequence[str], model: str, priority: Priority, deadline: float | None) -> _Job:
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError("texts must be a sequence of strings, not a single string")
        if not texts:
            raise ValueError("texts is empty; give at least one string")
        if len(texts) > MAX_TEXTS_PER_JOB:
            raise ValueError(f"too many texts: {len(texts)} > {MAX_TEXTS_PER_JOB}")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"texts[{bad[0]}] is {type(texts[bad[0]]).__name__}, not str")
        try:
            priority = Priority(priority)
        except ValueError:
            raise ValueError(
                f"unknown priority {priority!r}; use Priority.CONSENSUS or Priority.NORMAL"
            ) from None
        self.registry.entry(model, ModelKind.EMBEDDING)  # raises UnknownModelError
        if deadline is not None and not isinstance(deadline, int | float):
            raise TypeError(f"deadline must be time.time() seconds, got {type(deadline).__name__}")
        return _Job(
            job_id=uuid.uuid4().hex[:16],
            model=model,
            texts=list(texts),
            priority=priority,
            deadline=None if deadline is None else float(deadline),
            submitted_at=time.time(),
            mailbox=AsyncMailbox(),
        )

    # ---- worker thread ----------------------------------------------------

    def _take_batch(self, w: _Worker, now: float) -> tuple[list[_Job], list[_Job]]:
        """Under the lock: (batch for w, expired jobs met on the way)."""
        expired: list[_Job] = []
        batch: list[_Job] = []
        texts = 0
        klass: Priority | None = None

        closed = False  # after the first misfit, keep the rest queued in order

        def select(job: _Job) -> bool:
            nonlocal texts, klass, closed
            if job.deadline is not None and job.deadline <= now:
                expired.append(job)
                return True
            if closed or job.model != w.model:
                return False
            if klass is None:
                klass = job.priority
            elif job.priority != klass or texts + len(job.texts) > self.max_batch_texts:
                closed = True
                return False
            batch.append(job)
            texts += len(job.texts)
            return True

        self._queue.take(select)
        for job in batch:
            job.started = True
        return batch, expired

    def _worker_loop(self, w: _Worker) -> None:
        if self.openmp_threads is not None:
            devices.own_openmp_team(self.openmp_threads)
        try:
            while True:
                with self._cond:
                    while True:
                        if w.stop_requested or self._closed:
                            return
                        batch, expired = self._take_batch(w, time.time())
                        if batch or expired:
                            break
                        self._cond.wait()
                    if batch:
                        w.state = "busy"
                for job in expired:
                    self._log.append(
                        LogType.EXPIRED,
                        worker_id=w.worker_id,
                        model=job.model,
                        request_id=job.job_id,
                        message="deadline passed in queue; dropped unstarted",
                    )
                    job.mailbox.put(
                        JobExpiredError(
                            f"embedding job {job.job_id} expired in the queue; it was not started"
                        )
                    )
                if batch:
                    self._run_batch(w, batch)
                    with self._cond:
                        if w.state == "busy":
                            w.state = "ready"
        finally:
            with self._cond:
                w.state = "stopped"
                w.st_model = None
                self._workers.pop(w.worker_id, None)
            self._log.append(LogType.UNLOAD, worker_id=w.worker_id, model=w.model, message="worker stopped")
            w.stopped.set()

    def _run_batch(self, w: _Worker, batch: list[_Job]) -> None:
        started = time.time()
        texts = [t for job in batch for t in job.texts]
        for job in batch:
            self._log.append(
                LogType.START,
                worker_id=w.worker_id,
                model=w.model,
                request_id=job.job_id,
                message=f"{len(job.texts)} texts, priority {job.priority.name.lower()}, batch of {len(texts)}",
            )
        t0 = time.perf_counter()
        try:
            vectors = w.st_model.encode(
                texts,
                batch_size=max(1, len(texts)),
                convert_to_numpy=True,
                normalize_embeddings=self.normalize,
                show_progress_bar=False,
            ).astype(np.float32, copy=False)
        except Exception as exc:
            msg = f"{type(exc).__name__}: {exc}"
            for job in batch:
                self._log.append(
                    LogType.ERROR, worker_id=w.worker_id, model=w.model, request_id=job.job_id, message=msg
                )
                job.mailbox.put(EngineError(f"embedding job {job.job_id} failed on {w.worker_id}: {msg}"))
            return
        compute = time.perf_counter() - t0
        rate = len(texts) / compute if compute > 0 else None
        with self._cond:
            w.jobs_done += len(batch)
            w.texts_done += len(texts)
            if rate is not None:
                w.texts_per_s = rate if w.texts_per_s is None else 0.8 * w.texts_per_s + 0.2 * rate
        offset = 0
        for job in batch:
            n = len(job.texts)
            result = EmbeddingResult(
                model=w.model,
                vectors=vectors[offset : offset + n].copy(),
                normalized=w.normalized,
                worker_id=w.worker_id,
                queue_s=started - job.submitted_at,
                compute_s=compute,
            )
            offset += n
            self._log.append(
                LogType.FINISH,
                worker_id=w.worker_id,
                model=w.model,
                request_id=job.job_id,
                tokens=n,
                message=f"{n} texts in {compute:.3f}s",
            )
            job.mailbox.put(result)

    # ---- logs and lifecycle ---------------------------------------------------

    def logs(self, last_n: int | None = 100) -> list[LogEntry]:
        return self._log.last(last_n)

    def search_logs(self, **filters: Any) -> list[LogEntry]:
        return self._log.search(**filters)

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosedError("the embedding engine is closed")

    def close(self, timeout: float = 30.0) -> None:
        """Stop all workers (each finishes its batch) and fail every queued job."""
        with self._cond:
            self._closed = True
            pending = self._queue.drain()
            workers = list(self._workers.values())
            self._cond.notify_all()
        for job in pending:
            job.mailbox.put(EngineClosedError(f"embedding job {job.job_id}: the engine was closed"))
        for w in workers:
            w.stopped.wait(timeout)

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.close)

    async def __aenter__(self) -> EmbeddingEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def load_embed_fn(
    model: str = DEFAULT_EMBEDDING,
    *,
    registry: ModelRegistry | None = None,
    device: str | None = None,
    normalize: bool = False,
):
    """A plain blocking `embed_fn(list[str]) -> float32 [n, d]` for code without an
    event loop (certificate checks, `rakis verify`). Same model files and the same
    `encode` call as the workers, so its vectors match the engine's."""
    from sentence_transformers import SentenceTransformer

    reg = registry or ModelRegistry()
    path = reg.resolve(model, ModelKind.EMBEDDING)
    st = SentenceTransformer(str(path), device=devices.resolve_device(device), local_files_only=True)
    st.eval()

    def embed_fn(texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not a single string")
        return st.encode(
            list(texts), convert_to_numpy=True, normalize_embeddings=normalize, show_progress_bar=False
        ).astype(np.float32, copy=False)

    return embed_fn
