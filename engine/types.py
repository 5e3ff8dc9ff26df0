"""Public request/response types of the engine core (re-exported by engine.core)."""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

FINISH_REASONS = ("stop", "length", "abort", "expired", "error")


@dataclass
class SamplingParams:
    """How to pick tokens. temperature 0 = greedy. Sampling is verifiable (see
    engine.sampling): token t is drawn from the adjusted distribution with
    u_t = U(seed, t), so (logits, seed, t) alone decide it. seed None means
    `engine.sampling.default_seed(request_id)`."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    max_tokens: int = 128
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False

    def validate(self) -> None:
        """Raise ValueError naming the bad field; nothing is queued for a bad request."""
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature):
            raise ValueError(f"temperature must be a finite number, got {self.temperature!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not isinstance(self.top_p, (int, float)) or not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if self.seed is not None and (
            not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= 2**63 - 1
        ):
            raise ValueError(f"seed must be an int in [0, 2**63 - 1] or None, got {self.seed!r}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {self.max_tokens!r}")
        if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a list of non-empty strings, got {self.stop!r}")


@dataclass
class GenerationRequest:
    """One generation job. Exactly one of messages (chat template applied), prompt
    (raw text) or prompt_token_ids. deadline is time.time() seconds."""

    request_id: str
    sampling: SamplingParams = field(default_factory=SamplingParams)
    messages: list[dict] | None = None
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    deadline: float | None = None


@dataclass
class TokenEvent:
    """One generated token. text is the decoded delta it completes (may be "" while a
    multi-byte character is incomplete or text is held back as a possible stop string)."""

    request_id: str
    token_id: int
    text: str
    index: int


@dataclass
class GenerationResult:
    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length" | "abort" | "expired" | "error"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    ttft_s: float | None
    total_s: float
    error: str | None = None


@dataclass
class RecheckRequest:
    """Re-check one revealed output against the model (engine.recheck).

    The prompt is given exactly as for generation (one of messages, prompt,
    prompt_token_ids; the same templating code path builds the ids). The output is
    given as token ids (exact), as text (re-tokenized; see engine.recheck for the
    risk), or both: then the ids are checked and the text must be exactly what
    generation emits for them (else `text_mismatch`). `sampling` must be the producer's, seed included (None: the producer's
    default seed for `request_id`). `model` names the model for LLMEngine (EngineCore
    ignores it). `details` asks for per-position figures (calibration).
    """

    request_id: str
    sampling: SamplingParams = field(default_factory=SamplingParams)
    messages: list[dict] | None = None
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    output_token_ids: list[int] | None = None
    output_text: str | None = None
    model: str | None = None
    deadline: float | None = None
    details: bool = False


@dataclass(frozen=True)
class PositionDetail:
    """What the verifier saw at one generated position (calibration data).

    margin: T > 0, distance of u_t to the nearest edge of the picked token's CDF
    interval (normalised to total mass 1); T = 0, top-1 minus top-2 logit.
    lo/hi: the revealed token's interval (T > 0; 0, 0 when it was not kept).
    dist: T > 0, distance of u_t to the revealed token's interval; T = 0, how far
    its logit is below the maximum.
    """

    index: int
    token_id: int
    picked: int
    margin: float
    lo: float
    hi: float
    suspect: bool
    dist: float = 0.0  # how far the revealed token is from being picked (0 when it is)


@dataclass(frozen=True)
class RecheckResult:
    """The verdict on one revealed output.

    passed: every revealed token is the one the sampler picks (up to the tolerated
    suspect positions) and the output stops where the sampler stops. reason: None
    when passed, else a short snake_case cause (token_mismatch, wrong_stop, too_long,
    too_many_suspect, untokenizable, bad_request), or "unavailable" when the check
    could not run at all (aborted, expired, engine error, no worker): that is NOT a
    verdict on the output. log_likelihood: sum of the revealed tokens' log-probs
    under the unadjusted (T = 1) distribution, over the positions checked.
    """

    request_id: str
    passed: bool
    reason: str | None
    positions: int
    suspect_positions: int
    first_bad_position: int | None
    log_likelihood: float
    min_margin: float | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    total_s: float = 0.0
    error: str | None = None
    details: list[PositionDetail] | None = field(default=None, repr=False)

    @property
    def checked(self) -> bool:
        """False when no verdict was reached (reason "unavailable")."""
        return self.reason != "unavailable"


Event = TokenEvent | GenerationResult | RecheckResult


class RequestStream:
    """Thread-safe stream of one request's events; the GenerationResult comes last.

    Produced by EngineCore.submit. Iterate for TokenEvents (blocks), call result() for
    the final outcome, or add_listener() to be called on the scheduler thread (lets an
    async loop bridge with call_soon_threadsafe / trio.from_thread without polling).
    """

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self._q: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._lock = threading.RLock()
        self._listeners: list[Callable[[Event], None]] = []
        self._history: list[Event] = []
        self._result: GenerationResult | RecheckResult | None = None
        self._done = threading.Event()

    # called by the engine --------------------------------------------------------------
    def _emit(self, ev: Event) -> None:
        # Listeners run under the stream's (re-entrant) lock so a listener added
        # concurrently sees past events replayed strictly before new ones.
        with self._lock:
            if self._result is not None:
                return
            self._history.append(ev)
            if not isinstance(ev, TokenEvent):  # a GenerationResult or RecheckResult ends it
                self._result = ev
                self._done.set()
            self._q.put(ev)
            for fn in self._listeners:
                try:
                    fn(ev)
                except Exception:  # a broken listener must not stop the scheduler
                    pass

    # consumer API ----------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def add_listener(self, fn: Callable[[Event], None]) -> None:
        """Register fn; events already emitted are replayed to it first, in order."""
        with self._lock:
            for ev in self._history:
                fn(ev)
            self._listeners.append(fn)

    def get(self, timeout: float | None = None) -> Event:
        """Next event (TokenEvent ... then the GenerationResult); raises queue.Empty on timeout."""
        return self._q.get(timeout=timeout)

    def __iter__(self) -> Iterator[TokenEvent]:
        while True:
            ev = self._q.get()
            if not isinstance(ev, TokenEvent):
                self._q.put(ev)  # keep it available to result()/get()
                return
            yield ev

    def result(self, timeout: float | None = None) -> Any:
        """The final GenerationResult (a RecheckResult for a stream from submit_recheck)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.request_id} not finished after {timeout} s")
        assert self._result is not None
        return self._result
