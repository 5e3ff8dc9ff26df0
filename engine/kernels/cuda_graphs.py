"""CUDA-graph runner for the engine's decode step.

Why: a decode step of a small model (SmolLM2-135M: 30 layers x ~10 kernels) is a few
hundred tiny launches; at batch 1 the CPU launch cost, not the GPU, sets the speed. A
CUDA graph replays the whole step with one launch. Graphs need fixed shapes and fixed
addresses, so the runner keeps static input buffers sized for the largest batch, captures
one graph per batch-size bucket (as nano-vllm and vLLM do), and pads each real batch up to
its bucket. Padding is harmless by contract (docs/CONTRACTS.md): a padded row has
`slot_mapping = -1` (store_kv writes nothing) and `seq_lens = 0` (attention returns zeros).

How the engine uses it (decode only; prefill stays eager because its shapes vary):

    runner = DecodeGraphRunner(model_decode_forward, max_batch_size=64,
                               max_blocks_per_seq=max_model_len // block_size, device=device)
    runner.capture()            # once, after weights and the KV cache are allocated
    ...
    hidden = runner(input_ids, positions, slot_mapping, block_tables, seq_lens)
    logits = lm_head(hidden)    # or let the forward return logits; then sample

With engine.model.LlamaRunner the forward is a closure over the op set and the per-layer
caches (tests/engine/kernels/test_engine_integration.py runs exactly this):

    def model_decode_forward(input_ids, positions, slot_mapping, block_tables, seq_lens):
        attn = AttnBatch(num_decode=input_ids.shape[0], decode_block_tables=block_tables,
                         decode_seq_lens=seq_lens, prefill_block_tables=None,
                         prefill_seq_lens=None, prefill_cu_seqlens=None, prefill_max_seqlen=0)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        return runner.forward(ops, input_ids, positions, slot_mapping, attn, rows, k_cache, v_cache)

Only pure-decode steps go through the graph; mixed prefill + decode steps run eagerly.
Sampling stays outside (it syncs with the host for per-request parameters and generators).

`model_decode_forward(input_ids, positions, slot_mapping, block_tables, seq_lens) -> Tensor`
takes input_ids int64 `[B]`, positions int64 `[B]`, slot_mapping int64 `[B]`, block_tables
int32 `[B, max_blocks_per_seq]`, seq_lens int32 `[B]` (all on `device`) and returns a tensor
whose first dim is B. Inside it must not sync with the host (no `.item()`, `.tolist()`,
`.max()` used as a Python int, no data-dependent shapes, no new CPU->GPU copies) and must
read the KV cache only through those arguments: everything it touches is frozen into the
graph. The kernels.get_ops("cuda") decode ops satisfy this. The returned tensor is a view of
the graph's static output: use it (lm_head, sample, copy) before the next call.

On CPU, or with mode="eager", the runner just calls the forward. mode="static" runs the
forward eagerly on the padded static buffers, exactly as a replay would see them; it
exists so the padding logic and a forward's graph-readiness can be tested without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch

__all__ = ["DecodeGraphRunner", "default_buckets"]

DecodeForward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def default_buckets(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, then every 16 up to max_batch_size (always included): nano-vllm's choice,
    which keeps padding waste under 2x for small batches and under 16 rows for large ones."""
    buckets = [b for b in (1, 2, 4, 8) if b < max_batch_size]
    buckets += list(range(16, max_batch_size, 16))
    return sorted({*buckets, max_batch_size})


class DecodeGraphRunner:
    """Capture the decode forward once per batch bucket; replay it with padded static inputs."""

    def __init__(
        self,
        forward: DecodeForward,
        *,
        max_batch_size: int,
        max_blocks_per_seq: int,
        device: str | torch.device,
        buckets: Sequence[int] | None = None,
        mode: Literal["auto", "graph", "static", "eager"] = "auto",
    ) -> None:
        if max_batch_size < 1 or max_blocks_per_seq < 1:
            raise ValueError(
                f"max_batch_size ({max_batch_size}) and max_blocks_per_seq ({max_blocks_per_seq}) must be >= 1"
            )
        self.device = torch.device(device)
        if mode == "auto":
            mode = "graph" if self.device.type == "cuda" else "eager"
        if mode == "graph" and self.device.type != "cuda":
            raise ValueError(f"mode='graph' needs a CUDA device, got {self.device}")
        self.mode = mode
        self.forward = forward
        self.max_batch_size = max_batch_size
        self.max_blocks_per_seq = max_blocks_per_seq
        self.buckets = sorted(set(buckets)) if buckets is not None else default_buckets(max_batch_size)
        if not self.buckets or self.buckets[0] < 1 or self.buckets[-1] > max_batch_size:
            raise ValueError(f"buckets must lie in 1..{max_batch_size}, got {self.buckets}")
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._outputs: dict[int, torch.Tensor] = {}
        if mode in ("graph", "static"):
            n, dev = max_batch_size, self.device
            self._input_ids = torch.zeros(n, dtype=torch.int64, device=dev)
            self._positions = torch.zeros(n, dtype=torch.int64, device=dev)
            self._slot_mapping = torch.full((n,), -1, dtype=torch.int64, device=dev)
            self._block_tables = torch.zeros(n, max_blocks_per_seq, dtype=torch.int32, device=dev)
            self._seq_lens = torch.zeros(n, dtype=torch.int32, device=dev)

    @property
    def captured(self) -> bool:
        return bool(self._graphs)

    def _static_args(self, bucket: int) -> tuple[torch.Tensor, ...]:
        return (
            self._input_ids[:bucket],
            self._positions[:bucket],
            self._slot_mapping[:bucket],
            self._block_tables[:bucket],
            self._seq_lens[:bucket],
        )

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture one graph per bucket (largest first, sharing one memory pool).

        Call after the model weights and KV cache exist and before serving. The warm-up run
        before each capture compiles the Triton kernels and lets cuBLAS pick its algorithms,
        neither of which may happen during capture. Buffers hold padding values meanwhile,
        so capture writes nothing to the KV cache. No-op outside mode="graph".
        """
        if self.mode != "graph" or self._graphs:
            return
        self._slot_mapping.fill_(-1)
        self._seq_lens.zero_()
        pool = None
        for bucket in reversed(self.buckets):
            args = self._static_args(bucket)
            self.forward(*args)  # warm-up (compile, autotune, allocator)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self.forward(*args)
            if pool is None:
                pool = graph.pool()
            self._graphs[bucket] = graph
            self._outputs[bucket] = out
        torch.cuda.synchronize(self.device)

    def bucket_for(self, batch: int) -> int | None:
        """Smallest bucket holding `batch` rows, or None when the batch must run eagerly."""
        return next((b for b in self.buckets if b >= batch), None)

    @torch.inference_mode()
    def __call__(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        slot_mapping: torch.Tensor,
        block_tables: torch.Tensor,
        seq_lens: torch.Tensor,
    ) -> torch.Tensor:
        batch = input_ids.shape[0]
        for name, t in (("positions", positions), ("slot_mapping", slot_mapping), ("seq_lens", seq_lens)):
            if t.dim() != 1 or t.shape[0] != batch:
                raise ValueError(f"{name} must be [B={batch}], got {tuple(t.shape)}")
        if block_tables.dim() != 2 or block_tables.shape[0] != batch:
            raise ValueError(f"block_tables must be [B={batch}, blocks], got {tuple(block_tables.shape)}")
        bucket = self.bucket_for(batch)
        use_static = self.mode == "static" or (self.mode == "graph" and self._graphs)
        if not use_static or bucket is None or batch == 0:
            return self.forward(input_ids, positions, slot_mapping, block_tables, seq_lens)
        width = block_tables.shape[1]
        if width > self.max_blocks_per_seq:
            raise ValueError(
                f"block_tables has {width} columns, runner was sized for {self.max_blocks_per_seq}"
            )

        # Stage: real rows first, then padding rows that store nothing and attend to nothing.
        # Columns past `width` keep stale ids; attention never reads entries past seq_len.
        self._input_ids[:batch].copy_(input_ids)
        self._positions[:batch].copy_(positions)
        self._slot_mapping[:batch].copy_(slot_mapping)
        self._slot_mapping[batch:bucket].fill_(-1)
        self._block_tables[:batch, :width].copy_(block_tables)
        self._seq_lens[:batch].copy_(seq_lens)
        self._seq_lens[batch:bucket].zero_()

        if self.mode == "static":
            return self.forward(*self._static_args(bucket))[:batch]
        self._graphs[bucket].replay()
        return self._outputs[bucket][:batch]
