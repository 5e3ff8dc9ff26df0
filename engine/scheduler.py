"""Iteration-level continuous batching over the paged KV cache.

Every step the scheduler picks, under a token budget, a chunk of not-yet-computed
tokens for each sequence: a decode is a chunk of one token, a prompt is computed
in chunks (chunked prefill), and a sequence samples when its chunk reaches its last
token. Running sequences go first (oldest first), then waiting ones are admitted in
deadline order (earliest first; no deadline last) while the batch and the cache
have room. When a running sequence cannot get a block, unreferenced prefix-cache
blocks are evicted, then the newest running sequence is preempted (its blocks are
freed; it is recomputed later, mostly from the prefix cache). A request whose
deadline has passed is dropped as expired at the start of the next step, whatever its
state: waiting and never run, preempted, or running (its blocks are freed at once; the
core ends its stream with finish_reason "expired" and the tokens made so far).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from engine.kv_cache import BlockAllocator
from engine.radix import RadixCache
from engine.types import GenerationRequest, RequestStream, SamplingParams


@dataclass(eq=False)
class Sequence:
    """A request's state inside the engine."""

    seq_id: int
    request: GenerationRequest
    stream: RequestStream
    params: SamplingParams
    token_ids: list[int]
    num_prompt: int
    t_submit: float
    blocks: list[int] = field(default_factory=list)
    num_computed: int = 0
    tree_blocks: int = 0  # blocks[:tree_blocks] are already known to the radix tree
    cached_tokens: int = 0
    admitted: bool = False
    t_first: float | None = None
    seed: int = 0  # the verifiable sampler's seed (engine.sampling)
    detok: Any = None
    finished: bool = False
    priority: int = 1  # 0: consensus work (re-checks), admitted before everything else
    recheck: Any = None  # engine.recheck.RecheckState: a scoring pass, never samples
    score_t0: int = 0  # a re-check restarted after re-tokenizing scores from this output index

    @property
    def score_from(self) -> int | None:
        """First position whose logits a re-check needs (None: a generation)."""
        return None if self.recheck is None else self.num_prompt - 1 + self.score_t0

    @property
    def match_limit(self) -> int:
        """Tokens the prefix cache may serve: at least one must be computed for logits,
        and a re-check must compute every position it scores."""
        sf = self.score_from
        return len(self.token_ids) - 1 if sf is None else sf

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.num_prompt

    @property
    def deadline(self) -> float:
        d = self.request.deadline
        return math.inf if d is None else d


@dataclass
class ScheduledBatch:
    """What to run this step: (sequence, chunk length) pairs, decodes (chunk 1) first."""

    items: list[tuple[Sequence, int]]
    expired: list[Sequence]
    out_of_memory: list[Sequence]


class Scheduler:
    def __init__(
        self,
        allocator: BlockAllocator,
        radix: RadixCache | None,
        block_size: int,
        max_batch_size: int,
        max_num_batched_tokens: int,
    ) -> None:
        if max_batch_size < 1 or max_num_batched_tokens < 1:
            raise ValueError("max_batch_size and max_num_batched_tokens must be >= 1")
        self.allocator = allocator
        self.radix = radix
        self.block_size = block_size
        self.max_batch_size = max_batch_size
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []  # admission order: newest last
        self.num_preemptions = 0

    # ------------------------------------------------------------------ bookkeeping
    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _release(self, seq: Sequence) -> None:
        for b in seq.blocks:
            self.allocator.decref(b)
        seq.blocks = []
        seq.num_computed = 0
        seq.tree_blocks = 0

    def remove(self, seq: Sequence) -> None:
        """Forget seq (finished or aborted) and free its blocks now."""
        self._release(seq)
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def preempt(self, seq: Sequence) -> None:
        """Free seq's blocks and requeue it for recomputation."""
        self._release(seq)
        self.running.remove(seq)
        self.waiting.append(seq)
        self.num_preemptions += 1

    def _ensure_blocks(self, seq: Sequence, num_tokens: int) -> bool:
        need = -(-num_tokens // self.block_size) - len(seq.blocks)
        if need <= 0:
            return True
        free = self.allocator.num_free
        if free < need and self.radix is not None:
            self.radix.evict(need - free)
        if self.allocator.num_free < need:
            return False
        seq.blocks.extend(self.allocator.allocate(need))
        return True

    # ------------------------------------------------------------------ one step
    def schedule(self, now: float | None = None) -> ScheduledBatch:
        now = time.time() if now is None else now
        bs = self.block_size
        budget = self.max_num_batched_tokens
        items: list[tuple[Sequence, int]] = []
        out_of_memory: list[Sequence] = []

        expired = [s for s in self.running + self.waiting if s.deadline < now]
        for s in expired:
            self.remove(s)  # frees its blocks now, not when the core gets to it

        for seq in list(self.running):
            if seq not in self.running:  # preempted while making room for an older one
                continue
            chunk = min(len(seq.token_ids) - seq.num_computed, budget)
            if chunk <= 0:
                continue
            while not self._ensure_blocks(seq, seq.num_computed + chunk):
                victim = self.running[-1]
                if victim is seq and len(self.running) == 1:
                    # Alone and still out of blocks: the cache cannot hold it at all.
                    self.remove(seq)
                    out_of_memory.append(seq)
                    break
                self.preempt(victim)
                if victim is seq:
                    break
            if seq not in self.running:
                continue
            items.append((seq, chunk))
            budget -= chunk

        if self.waiting and budget > 0 and len(self.running) < self.max_batch_size:
            self.waiting.sort(key=lambda s: (s.priority, s.deadline, s.seq_id))
            inflight: set[int] = set()  # prefixes (as hashes) whose blocks this step computes
            for seq, chunk in items:
                self._note_inflight(seq, chunk, inflight)
            for seq in list(self.waiting):
                if len(self.running) >= self.max_batch_size or budget <= 0:
                    break
                limit = seq.match_limit
                if self.radix is not None:
                    hit = self.radix.peek(seq.token_ids, limit)
                    nxt = hit + bs
                    if nxt <= limit and hash(tuple(seq.token_ids[:nxt])) in inflight:
                        continue  # another sequence computes this block now: share it next step
                    seq.blocks = self.radix.match(seq.token_ids, limit)
                    seq.tree_blocks = len(seq.blocks)
                    seq.num_computed = len(seq.blocks) * bs
                chunk = min(len(seq.token_ids) - seq.num_computed, budget)
                if not self._ensure_blocks(seq, seq.num_computed + chunk):
                    self._release(seq)
                    break
                if not seq.admitted:
                    seq.admitted = True
                    seq.cached_tokens = seq.num_computed
                self.waiting.remove(seq)
                self.running.append(seq)
                items.append((seq, chunk))
                budget -= chunk
                self._note_inflight(seq, chunk, inflight)

        items.sort(key=lambda it: it[1] != 1)  # decode-shaped chunks first (stable)
        return ScheduledBatch(items, expired, out_of_memory)

    def _note_inflight(self, seq: Sequence, chunk: int, inflight: set[int]) -> None:
        if self.radix is None:
            return
        bs = self.block_size
        first = seq.num_computed // bs + 1
        last = (seq.num_computed + chunk) // bs
        for nb in range(first, last + 1):
            inflight.add(hash(tuple(seq.token_ids[: nb * bs])))

    def update(self, items: list[tuple[Sequence, int]]) -> None:
        """Record that the step computed each item's chunk; share newly full blocks."""
        bs = self.block_size
        for seq, chunk in items:
            seq.num_computed += chunk
            if self.radix is not None:
                nfull = seq.num_computed // bs
                if nfull > seq.tree_blocks:
                    self.radix.insert(seq.token_ids[: nfull * bs], seq.blocks[:nfull])
                    seq.tree_blocks = nfull
