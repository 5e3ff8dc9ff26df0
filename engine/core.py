"""EngineCore: one loaded model + one scheduler thread (a "worker").

Two kinds of work share the scheduler: generation (`submit`) and re-checks of
revealed outputs (`submit_recheck`, engine.recheck), which are teacher-forced
prefill passes scored position by position, admitted ahead of generation and
sharing the prompt's prefix-cache blocks.

Callers submit requests from any thread and get a RequestStream back; the worker
thread owns all scheduling state (blocks, radix tree, sequences), so nothing on
the hot path takes a lock except the hand-over of new requests and aborts.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import threading
import time
from collections import deque
from pathlib import Path

import structlog
import torch

from engine import devices
from engine.attention import engine_ops
from engine.config import EngineConfig
from engine.detok import IncrementalDetokenizer
from engine.kv_cache import BlockAllocator, KVCache
from engine.model import AttnBatch, make_runner, resolve_model_dir
from engine.radix import RadixCache
from engine.recheck import (
    DEFAULT_TOLERANCE,
    RecheckState,
    RecheckTolerance,
    immediate_result,
    structural_check,
)
from engine.sampling import default_seed, sample_tokens
from engine.scheduler import Scheduler, Sequence
from engine.types import (
    Event,
    GenerationRequest,
    GenerationResult,
    RecheckRequest,
    RecheckResult,
    RequestStream,
    SamplingParams,
    TokenEvent,
)

__all__ = [
    "EngineCore",
    "GenerationRequest",
    "GenerationResult",
    "RecheckRequest",
    "RecheckResult",
    "RequestStream",
    "SamplingParams",
    "TokenEvent",
    "Event",
]

log = structlog.get_logger(__name__)

_DEFAULT_CPU_KV_BYTES = 256 * 1024 * 1024


def _available_ram() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 4 << 30


class EngineCore:
    """One model, one scheduler thread: continuous batching over a paged KV cache."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        kv_cache_bytes: int | None = None,
        kv_cache_fraction: float | None = None,
        block_size: int = 16,
        max_batch_size: int = 32,
        max_num_batched_tokens: int = 512,
        enable_prefix_cache: bool = True,
        quant: str | None = None,
        num_threads: int | None = None,
        name: str | None = None,
        recheck_tolerance: RecheckTolerance = DEFAULT_TOLERANCE,
    ) -> None:
        """The keyword settings are ``engine.config.EngineConfig``'s fields (``quant`` is
        its ``weight_mode``), checked by it; ``LLMEngine`` passes ``config.core_kwargs()``."""
        from transformers import AutoTokenizer, GenerationConfig

        EngineConfig(  # validates, raising ValueError naming the field
            kv_cache_bytes=kv_cache_bytes,
            kv_cache_fraction=kv_cache_fraction,
            block_size=block_size,
            max_batch_size=max_batch_size,
            max_num_batched_tokens=max_num_batched_tokens,
            enable_prefix_cache=enable_prefix_cache,
            weight_mode=None if quant in (None, "none") else quant,
        )
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self._num_threads = num_threads
        model_dir = resolve_model_dir(model_dir)
        self.model_dir = model_dir
        self.recheck_tolerance = recheck_tolerance
        self.device = device
        self.model_name = name or model_dir.name
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        # The worker thread detokenizes with its own instance and callers' threads encode
        # under a lock: fast tokenizers raise "Already borrowed" when shared concurrently.
        self._detok_tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self._encode_lock = threading.Lock()
        # Loading and the KV cache's allocation run parallel ops: on a passing thread, so
        # the caller keeps no OpenMP team next to the worker's (devices.own_openmp_team).
        self.runner = devices.on_passing_thread(
            make_runner, model_dir, device=device, dtype=dtype, quant=quant
        )
        self.ops = engine_ops(device)
        log.info(
            "engine_worker_ready",
            model=self.model_name,
            device=str(device),
            ops=self.ops.backend,
            projections="oneDNN packed" if self.runner.lm_head.packed else "F.linear",
            decode_attention=getattr(self.ops.paged_attention_decode, "__name__", "?"),
        )
        self.block_size = block_size
        self.max_model_len = self.runner.max_position

        eos: set[int] = set()
        try:
            gen_eos = GenerationConfig.from_pretrained(str(model_dir)).eos_token_id
        except OSError:
            gen_eos = None
        for e in gen_eos if isinstance(gen_eos, list) else [gen_eos]:
            if e is not None:
                eos.add(int(e))
        if self.tokenizer.eos_token_id is not None:
            eos.add(int(self.tokenizer.eos_token_id))
        self.eos_token_ids = eos
        self._special_ids = set(self.tokenizer.all_special_ids)

        per_block = KVCache.bytes_per_block(
            self.runner.num_layers,
            block_size,
            self.runner.num_kv_heads,
            self.runner.head_dim,
            self.runner.dtype,
        )
        if kv_cache_bytes is None:
            if device.startswith("cuda"):
                free, _ = torch.cuda.mem_get_info(torch.device(device))
                kv_cache_bytes = int(free * (kv_cache_fraction or 0.5))
            elif kv_cache_fraction is not None:
                kv_cache_bytes = int(_available_ram() * kv_cache_fraction)
            else:
                kv_cache_bytes = min(_DEFAULT_CPU_KV_BYTES, _available_ram() // 4)
        num_blocks = kv_cache_bytes // per_block
        if num_blocks < 2:
            raise ValueError(
                f"kv cache of {kv_cache_bytes} bytes holds fewer than 2 blocks of {per_block} bytes"
            )
        self.kv = devices.on_passing_thread(
            KVCache,
            self.runner.num_layers,
            num_blocks,
            block_size,
            self.runner.num_kv_heads,
            self.runner.head_dim,
            self.runner.dtype,
            device,
        )
        self.allocator = BlockAllocator(num_blocks)
        self.radix = RadixCache(self.allocator, block_size) if enable_prefix_cache else None
        self.scheduler = Scheduler(
            self.allocator, self.radix, block_size, max_batch_size, max_num_batched_tokens
        )

        self._lock = threading.Condition()
        self._inbox: list[Sequence] = []
        self._aborts: list[str] = []
        self._active: dict[str, Sequence] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._steps = 0
        self._tok_window: deque[tuple[float, int]] = deque()
        self._total_generated = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name=f"engine-{self.model_name}", daemon=True)
            self._thread.start()

    def stop(self, abort_pending: bool = True) -> None:
        """Stop the worker thread. abort_pending=False first lets queued work finish."""
        if not abort_pending:
            while True:
                with self._lock:
                    if not self._active:
                        break
                    if self._thread is None or not self._thread.is_alive():
                        break
                time.sleep(0.01)
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        self._thread = None
        with self._lock:
            inbox, self._inbox = self._inbox, []
        for seq in inbox:
            self.scheduler.add(seq)
        for seq in list(self.scheduler.running) + list(self.scheduler.waiting):
            self._finish(seq, "abort")

    def __enter__(self) -> EngineCore:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ requests
    def _prompt_ids(self, req: GenerationRequest | RecheckRequest) -> list[int]:
        """The prompt's token ids: the one templating path for generation AND re-check."""
        given = [x is not None for x in (req.messages, req.prompt, req.prompt_token_ids)]
        if sum(given) != 1:
            raise ValueError("give exactly one of messages, prompt or prompt_token_ids")
        if req.messages is not None:
            if not isinstance(req.messages, list) or not all(
                isinstance(m, dict) and "role" in m and "content" in m for m in req.messages
            ):
                raise ValueError("messages must be a list of {'role', 'content'} dicts")
            text = self.tokenizer.apply_chat_template(
                req.messages, tokenize=False, add_generation_prompt=True
            )
            ids = self.tokenizer(text, add_special_tokens=False).input_ids
        elif req.prompt is not None:
            if not isinstance(req.prompt, str):
                raise ValueError("prompt must be a string")
            ids = self.tokenizer(req.prompt).input_ids
        else:
            ids = list(req.prompt_token_ids)  # type: ignore[arg-type]
            vocab = self.runner.vocab_size
            if not all(isinstance(t, int) and 0 <= t < vocab for t in ids):
                raise ValueError(f"prompt_token_ids must be ints in [0, {vocab})")
        if not ids:
            raise ValueError("prompt is empty")
        return ids

    def submit(self, req: GenerationRequest) -> RequestStream:
        """Queue a request; raises ValueError (queueing nothing) when it is malformed."""
        if not isinstance(req.request_id, str) or not req.request_id:
            raise ValueError("request_id must be a non-empty string")
        if not isinstance(req.sampling, SamplingParams):
            raise ValueError("sampling must be a SamplingParams")
        req.sampling.validate()
        with self._encode_lock:
            ids = self._prompt_ids(req)
        capacity = self.allocator.num_blocks * self.block_size
        if len(ids) + 1 > min(capacity, self.max_model_len):
            raise ValueError(
                f"prompt of {len(ids)} tokens does not fit (limit {min(capacity, self.max_model_len) - 1})"
            )
        p = req.sampling
        stream = RequestStream(req.request_id)
        seq = Sequence(
            seq_id=next(self._ids),
            request=req,
            stream=stream,
            params=p,
            token_ids=ids,
            num_prompt=len(ids),
            t_submit=time.monotonic(),
        )
        seq.seed = p.seed if p.seed is not None else default_seed(req.request_id)
        seq.detok = IncrementalDetokenizer(self._detok_tokenizer, p.stop, self._special_ids)
        self._enqueue(seq)
        return stream

    def _enqueue(self, seq: Sequence) -> None:
        with self._lock:
            if seq.request_id in self._active:
                raise ValueError(f"request_id {seq.request_id!r} is already active")
            self._active[seq.request_id] = seq
            self._inbox.append(seq)
            self._lock.notify_all()

    def submit_recheck(self, req: RecheckRequest, tolerance: RecheckTolerance | None = None) -> RequestStream:
        """Queue a re-check of one revealed output; the stream ends with a RecheckResult.

        Raises ValueError (queueing nothing) for a malformed request (no prompt, bad
        params, output given both or neither way, token ids outside the vocabulary).
        An output that fails on its structure (too long, text past EOS, text that
        does not re-tokenize) gets its failing RecheckResult at once, without a pass.
        """
        if not isinstance(req.request_id, str) or not req.request_id:
            raise ValueError("request_id must be a non-empty string")
        if not isinstance(req.sampling, SamplingParams):
            raise ValueError("sampling must be a SamplingParams")
        req.sampling.validate()
        if req.output_token_ids is None and req.output_text is None:
            raise ValueError("give output_token_ids, output_text, or both")
        p = req.sampling
        stream = RequestStream(req.request_id)
        with self._encode_lock:
            prompt = self._prompt_ids(req)
            if req.output_text is not None and req.output_token_ids is None:
                if not isinstance(req.output_text, str):
                    raise ValueError("output_text must be a string")
                out = (
                    self.tokenizer(req.output_text, add_special_tokens=False).input_ids
                    if req.output_text
                    else []
                )
                back = self.tokenizer.decode(
                    out, skip_special_tokens=True, clean_up_tokenization_spaces=False
                )
                if back != req.output_text or any(t in self._special_ids for t in out):
                    stream._emit(immediate_result(req.request_id, "untokenizable"))
                    return stream
            else:
                out = list(req.output_token_ids)  # type: ignore[arg-type]
                vocab = self.runner.vocab_size
                if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in out):
                    raise ValueError(f"output_token_ids must be ints in [0, {vocab})")
                if req.output_text is not None and self._decoded_output(out, p.stop) != req.output_text:
                    # Both given: the ids are checked, so the text must be what they decode to.
                    stream._emit(immediate_result(req.request_id, "text_mismatch"))
                    return stream
            stop_index = self._stop_index(out, p.stop) if p.stop else None
        bad = structural_check(
            out,
            # Text re-tokenizes into the canonical split, which may be longer than the
            # sampler's path: max_tokens is then enforced along that path (RecheckState).
            p if req.output_text is None else dataclasses.replace(p, max_tokens=max(p.max_tokens, len(out))),
            eos_token_ids=self.eos_token_ids,
            stop_index=stop_index,
            num_prompt=len(prompt),
            max_model_len=self.max_model_len,
        )
        if bad is not None:
            stream._emit(immediate_result(req.request_id, bad[0], first_bad=bad[1]))
            return stream
        total = len(prompt) + len(out)
        capacity = self.allocator.num_blocks * self.block_size
        if total > capacity:
            raise ValueError(f"prompt + output of {total} tokens does not fit the KV cache ({capacity})")
        seed = p.seed if p.seed is not None else default_seed(req.request_id)
        would_stop = realign = None
        text_only = req.output_text is not None and req.output_token_ids is None
        if text_only:
            realign = self._make_realign(req.output_text)
        if p.stop and text_only:
            # Text cut before a stop string: the token that completes it is not in the
            # text; accept the output when the sampler's next token completes one.
            def would_stop(ids: list[int], _stop=None) -> bool:
                if _stop is None:
                    _stop = list(p.stop)
                return self._stop_index(ids, _stop, tokenizer=self._detok_tokenizer) is not None

        state = RecheckState(
            req.request_id,
            p,
            seed,
            out,
            eos_token_ids=self.eos_token_ids,
            ended_by_stop=stop_index is not None,
            context_left=self.max_model_len - len(prompt),
            would_stop=would_stop,
            realign=realign,
            tolerance=tolerance or self.recheck_tolerance,
            details=req.details,
        )
        seq = Sequence(
            seq_id=next(self._ids),
            request=req,  # type: ignore[arg-type]  # only request_id and deadline are read
            stream=stream,
            params=p,
            token_ids=prompt + out,
            num_prompt=len(prompt),
            t_submit=time.monotonic(),
            seed=seed,
            priority=0,
            recheck=state,
        )
        self._enqueue(seq)
        return stream

    def _make_realign(self, text: str):
        """Text mode (worker thread): follow the sampler's pick at t when its text
        continues the revealed text; re-tokenize only what follows it."""
        tok = self._detok_tokenizer

        def decode(ids: list[int]) -> str:
            return tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

        def realign(out: list[int], t: int, picked: int) -> list[int] | None:
            if picked in self._special_ids:
                return None
            head = decode(out[:t] + [picked])
            if not head or head.endswith("\ufffd") or not text.startswith(head) or head == decode(out[:t]):
                return None
            rest = text[len(head) :]
            return out[:t] + [picked] + (tok(rest, add_special_tokens=False).input_ids if rest else [])

        return realign

    def _restart_recheck(self, seq: Sequence) -> None:
        """Worker thread: the output was re-tokenized from recheck.next_t on; score a
        new sequence from there (the prefix cache serves the blocks before it)."""
        st = seq.recheck
        st.realigned = False
        seq.finished = True
        self.scheduler.remove(seq)
        new = Sequence(
            seq_id=next(self._ids),
            request=seq.request,
            stream=seq.stream,
            params=seq.params,
            token_ids=seq.token_ids[: seq.num_prompt] + st.output,
            num_prompt=seq.num_prompt,
            t_submit=seq.t_submit,
            seed=seq.seed,
            priority=0,
            recheck=st,
            score_t0=st.next_t,
        )
        with self._lock:
            if self._active.get(seq.request_id) is seq:
                self._active[seq.request_id] = new
        self.scheduler.add(new)

    def _decoded_output(self, ids: list[int], stop: list[str]) -> str:
        """The text generation emits for these output ids: the same incremental
        detokenizer, cut at a stop string, flushed otherwise (callers' threads only)."""
        detok = IncrementalDetokenizer(self.tokenizer, stop, self._special_ids)
        hit = False
        for tok in ids:
            hit = detok.add(tok)[1]
            if hit:
                break
        if not hit:
            detok.flush()
        return detok.text

    def _stop_index(self, ids: list[int], stop: list[str], tokenizer=None) -> int | None:
        """First index whose token completes a stop string, decoded as generation does."""
        detok = IncrementalDetokenizer(tokenizer or self.tokenizer, stop, self._special_ids)
        for i, tok in enumerate(ids):
            if detok.add(tok)[1]:
                return i
        return None

    def recheck(self, reqs: list[RecheckRequest]) -> list[RecheckResult]:
        """Submit all re-checks, wait for all (starts the worker if needed)."""
        self.start()
        streams = [self.submit_recheck(r) for r in reqs]
        return [s.result() for s in streams]

    def generate(self, reqs: list[GenerationRequest]) -> list[GenerationResult]:
        """Submit all, wait for all (starts the worker if needed)."""
        self.start()
        streams = [self.submit(r) for r in reqs]
        return [s.result() for s in streams]

    def abort(self, request_id: str) -> bool:
        """Abort a queued or running request; its blocks are freed before its result is sent.

        Returns False when the id is unknown or already finished.
        """
        with self._lock:
            if request_id not in self._active:
                return False
            alive = self._thread is not None and self._thread.is_alive()
            if alive:
                self._aborts.append(request_id)
                self._lock.notify_all()
                return True
            seq = self._active[request_id]
            if seq in self._inbox:
                self._inbox.remove(seq)
        self._finish(seq, "abort")
        return True

    def stats(self) -> dict:
        """Snapshot for dashboards/metrics. prefix_hits / prefix_queries count prompt
        *tokens* (served from the prefix cache / looked up), so prefix_hit_rate is the
        fraction of prompt tokens not recomputed; prefix_hit_requests counts requests
        with at least one cached block. tokens_per_s is over the last 10 s."""
        now = time.monotonic()
        with self._lock:
            while self._tok_window and self._tok_window[0][0] < now - 10.0:
                self._tok_window.popleft()
            n = sum(c for _, c in self._tok_window)
            span = (now - self._tok_window[0][0]) if self._tok_window else 0.0
            waiting = len(self.scheduler.waiting) + len(self._inbox)
        r = self.radix
        q = r.query_tokens if r else 0
        h = r.hit_tokens if r else 0
        return {
            "model": self.model_name,
            "running": len(self.scheduler.running),
            "waiting": waiting,
            "kv_blocks_used": self.allocator.num_used,
            "kv_blocks_total": self.allocator.num_blocks,
            "kv_blocks_cached": r.num_blocks if r else 0,
            "prefix_hits": h,
            "prefix_queries": q,
            "prefix_hit_rate": (h / q) if q else 0.0,
            "prefix_hit_requests": r.hit_queries if r else 0,
            "tokens_per_s": (n / span) if span > 0.5 else 0.0,
            "generated_tokens": self._total_generated,
            "preemptions": self.scheduler.num_preemptions,
            "steps": self._steps,
        }

    # ------------------------------------------------------------------ worker thread
    def _loop(self) -> None:
        if self._num_threads is not None:
            devices.own_openmp_team(self._num_threads)
        sched = self.scheduler
        while True:
            with self._lock:
                while not (self._inbox or self._aborts or sched.has_work() or self._stopping):
                    self._lock.wait()
                if self._stopping:
                    return
                inbox, self._inbox = self._inbox, []
                aborts, self._aborts = self._aborts, []
            for seq in inbox:
                sched.add(seq)
            for rid in aborts:
                seq = self._active.get(rid)
                if seq is not None and not seq.finished:
                    self._finish(seq, "abort")
            if not sched.has_work():
                continue
            try:
                ran = self._step()
            except Exception as e:  # never let one bad step kill the worker
                log.exception("engine_step_failed", model=self.model_name)
                for seq in list(sched.running):
                    self._finish(seq, "error", error=f"{type(e).__name__}: {e}")
                ran = True
            if not ran:
                time.sleep(0.001)

    def _step(self) -> bool:
        sched = self.scheduler
        batch = sched.schedule(time.time())
        for seq in batch.expired:
            self._finish(seq, "expired")
        for seq in batch.out_of_memory:
            self._finish(seq, "length", error="KV cache too small for this sequence")
        items = batch.items
        if not items:
            return bool(batch.expired or batch.out_of_memory)

        bs = self.block_size
        dev = self.runner.device
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        sample_rows: list[int] = []
        sample_seqs: list[Sequence] = []
        score_rows: list[int] = []
        score_spans: list[tuple[Sequence, int, int, int]] = []  # seq, first row, rows, first t
        dec_tables: list[list[int]] = []
        dec_lens: list[int] = []
        pre_tables: list[list[int]] = []
        pre_lens: list[int] = []
        cu = [0]
        max_q = 0
        nd = 0
        for seq, chunk in items:
            start = seq.num_computed
            end = start + chunk
            row0 = len(input_ids)
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            blocks = seq.blocks
            if chunk == 1:
                slots.append(blocks[start // bs] * bs + start % bs)
                dec_tables.append(blocks)
                dec_lens.append(end)
                nd += 1
            else:
                slots.extend(blocks[p // bs] * bs + p % bs for p in range(start, end))
                pre_tables.append(blocks)
                pre_lens.append(end)
                cu.append(cu[-1] + chunk)
                max_q = max(max_q, chunk)
            sf = seq.score_from
            if sf is not None:
                first = max(start, sf)
                if first < end:
                    score_spans.append((seq, len(score_rows), end - first, first - (seq.num_prompt - 1)))
                    score_rows.extend(range(row0 + first - start, row0 + chunk))
            elif end == len(seq.token_ids):
                sample_rows.append(row0 + chunk - 1)
                sample_seqs.append(seq)

        def table(rows: list[list[int]]) -> torch.Tensor | None:
            if not rows:
                return None
            width = max(len(r) for r in rows)
            return torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.int32, device=dev)

        attn = AttnBatch(
            num_decode=nd,
            decode_block_tables=table(dec_tables),
            decode_seq_lens=torch.tensor(dec_lens, dtype=torch.int32, device=dev) if dec_lens else None,
            prefill_block_tables=table(pre_tables),
            prefill_seq_lens=torch.tensor(pre_lens, dtype=torch.int32, device=dev) if pre_lens else None,
            prefill_cu_seqlens=torch.tensor(cu, dtype=torch.int32, device=dev) if pre_lens else None,
            prefill_max_seqlen=max_q,
        )
        try:
            logits = self.runner.forward(
                self.ops,
                torch.tensor(input_ids, dtype=torch.long, device=dev),
                torch.tensor(positions, dtype=torch.long, device=dev),
                torch.tensor(slots, dtype=torch.long, device=dev),
                attn,
                torch.tensor(sample_rows + score_rows, dtype=torch.long, device=dev),
                self.kv.k,
                self.kv.v,
            )
            ns = len(sample_rows)
            toks = (
                sample_tokens(
                    logits[:ns],
                    [s.params for s in sample_seqs],
                    [s.seed for s in sample_seqs],
                    [s.num_generated for s in sample_seqs],
                )
                if sample_seqs
                else []
            )
            for seq, r0, nrows, first_t in score_spans:
                seq.recheck.observe(first_t, logits[ns + r0 : ns + r0 + nrows])
        except Exception as e:
            log.exception("engine_forward_failed", model=self.model_name)
            for seq, _ in items:
                self._finish(seq, "error", error=f"{type(e).__name__}: {e}")
            return True
        sched.update(items)
        self._steps += 1
        now = time.monotonic()
        for seq, tok in zip(sample_seqs, toks, strict=True):
            self._append_token(seq, tok, now)
        for seq, _, _, _ in score_spans:
            if seq.recheck.realigned and not seq.recheck.failed:
                self._restart_recheck(seq)
            elif seq.recheck.done:
                self._finish(seq, "done")
        if toks:
            with self._lock:
                self._tok_window.append((now, len(toks)))
            self._total_generated += len(toks)
        return True

    def _append_token(self, seq: Sequence, tok: int, now: float) -> None:
        seq.token_ids.append(tok)
        if seq.t_first is None:
            seq.t_first = now
        index = seq.num_generated - 1
        p = seq.params
        delta, hit_stop = seq.detok.add(tok)
        reason = None
        if not p.ignore_eos and tok in self.eos_token_ids:
            reason = "stop"
        elif hit_stop:
            reason = "stop"
        elif seq.num_generated >= p.max_tokens or len(seq.token_ids) >= self.max_model_len:
            reason = "length"
        if reason is not None and not hit_stop:
            delta += seq.detok.flush()
        seq.stream._emit(TokenEvent(seq.request_id, tok, delta, index))
        if reason is not None:
            self._finish(seq, reason)

    def _finish(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        if seq.finished:
            return
        seq.finished = True
        self.scheduler.remove(seq)
        with self._lock:
            self._active.pop(seq.request_id, None)
        now = time.monotonic()
        if seq.recheck is not None:
            extra = {
                "prompt_tokens": seq.num_prompt,
                "cached_tokens": seq.cached_tokens,
                "total_s": now - seq.t_submit,
            }
            if reason == "done":
                seq.stream._emit(seq.recheck.result(**extra))
            else:
                res = immediate_result(seq.request_id, "unavailable", error=error or reason)
                seq.stream._emit(dataclasses.replace(res, **extra))
            return
        gen = seq.token_ids[seq.num_prompt :]
        seq.stream._emit(
            GenerationResult(
                request_id=seq.request_id,
                text=seq.detok.text,
                token_ids=list(gen),
                finish_reason=reason,
                prompt_tokens=seq.num_prompt,
                completion_tokens=len(gen),
                cached_tokens=seq.cached_tokens,
                ttft_s=(seq.t_first - seq.t_submit) if seq.t_first is not None else None,
                total_s=now - seq.t_submit,
                error=error,
            )
        )
