"""A whole decode step in one native call, for Llama-family models with quantized weights.

Why: at batch 1 the op-by-op forward (engine/model.py) spends about as long issuing
torch ops and forking OpenMP teams as it does streaming weights (the profile in
docs/benchmarks.md). `FusedDecode` hands every layer of a decode-only step to
`rakis_decode_layers` (engine/native/decode_step.cpp): one call, one OpenMP team, the
same GEMM and attention kernels. The op-by-op path stays the oracle, and it still
runs prefill and mixed steps, other architectures, windows and every non-CPU device.

`FusedDecode.build(runner)` returns None where the fused path does not apply (weights
not all quantized, no compiler, RAKIS_FUSED_DECODE=0); a step it cannot take safely
(an index outside the cache or the rotary tables, caches of another dtype or layout)
returns None from `run` and the caller goes op by op.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import structlog
import torch

from engine import native
from engine.attention import native_decode_args
from engine.config import env_switches
from engine.quant import QuantLinear

log = structlog.get_logger(__name__)

SOURCE = Path(native.__file__).with_name("decode_step.cpp")
INCLUDES = (
    Path(native.__file__).with_name("paged_attention.cpp"),
    Path(native.__file__).with_name("quant_gemm.cpp"),
)


class RakisLayer(ctypes.Structure):
    """Mirror of `struct RakisLayer` in decode_step.cpp."""

    _fields_ = [
        ("w", ctypes.c_void_p * 4),
        ("wtype", ctypes.c_int * 4),
        ("qkv_bias", ctypes.c_void_p),
        ("norm_in", ctypes.c_void_p),
        ("norm_post", ctypes.c_void_p),
        ("k_cache", ctypes.c_void_p),
        ("v_cache", ctypes.c_void_p),
    ]


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    fn = lib.rakis_decode_layers
    p, i = ctypes.c_void_p, ctypes.c_int
    fn.argtypes = [p, i, p, p, i, p, p, p, p, i, i, p, p, i, i, i, i, i, i, ctypes.c_float, ctypes.c_float, i]
    fn.restype = None
    return lib


def load() -> ctypes.CDLL | None:
    """The fused decode-step library; None when unavailable.

    Built with -march=native like the paged-attention library (the build is keyed by
    this CPU, so it never moves hosts): the attention loops it includes are plain C++
    that only the compiler vectorizes. Attention's share of a step at B=32, context 150
    (one noisy measurement each): +28 ms without the flag, +20 ms with it, against
    +14.5 ms for engine.native's library called layer by layer; at that size it streams
    ~220 MB of fp32 K/V per step, so it is close to memory bound either way. The quant
    GEMM's own SIMD paths are still chosen at run time."""
    return native.load_library(SOURCE, native.CFLAGS, _declare, "rakis_decode", INCLUDES)


class FusedDecode:
    """Runs the layers of a LlamaRunner with QuantLinear projections for decode-only steps."""

    def __init__(self, runner, lib: ctypes.CDLL) -> None:
        self._runner = runner
        self._lib = lib
        self._layers_for: tuple[int, ...] = ()
        self._layers = None  # RakisLayer array, rebuilt when the caches move
        self._rotary_rows = runner.cos.shape[0]
        # cos/sin must stay [max_pos, D/2] fp32 contiguous for the kernel.
        self._cos = runner.cos.float().contiguous()
        self._sin = runner.sin.float().contiguous()

    @classmethod
    def build(cls, runner) -> FusedDecode | None:
        """A FusedDecode for `runner`, or None where the fused step does not apply."""
        if not env_switches().fused_decode or runner.device.type != "cpu" or runner.dtype != torch.float32:
            return None
        projections = [p for L in runner.layers for p in (L.qkv, L.o, L.gate_up, L.down)]
        if not all(isinstance(p, QuantLinear) for p in projections) or runner.head_dim % 2:
            return None
        lib = load()
        if lib is None:
            return None
        return cls(runner, lib)

    def _layer_array(self, k_cache: list[torch.Tensor], v_cache: list[torch.Tensor]):
        ptrs = tuple(t.data_ptr() for t in k_cache) + tuple(t.data_ptr() for t in v_cache)
        if ptrs != self._layers_for:
            arr = (RakisLayer * len(self._runner.layers))()
            for i, L in enumerate(self._runner.layers):
                projs = (L.qkv, L.o, L.gate_up, L.down)
                arr[i].w = (ctypes.c_void_p * 4)(*[p.kernel_blocks.data_ptr() for p in projs])
                arr[i].wtype = (ctypes.c_int * 4)(*[p.kernel_wtype for p in projs])
                arr[i].qkv_bias = None if L.qkv._b is None else L.qkv._b.data_ptr()
                arr[i].norm_in = L.w_in.data_ptr()
                arr[i].norm_post = L.w_post.data_ptr()
                arr[i].k_cache = k_cache[i].data_ptr()
                arr[i].v_cache = v_cache[i].data_ptr()
            self._layers, self._layers_for = arr, ptrs
        return self._layers

    def run(
        self,
        h: torch.Tensor,
        positions: torch.Tensor,
        slot_mapping: torch.Tensor,
        block_tables: torch.Tensor,
        seq_lens: torch.Tensor,
        k_cache: list[torch.Tensor],
        v_cache: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """All layers over the decode rows of `h` [B, H] (the embeddings): returns
        (h, residual) for the final norm, or None when this step must go op by op."""
        r = self._runner
        kc0 = k_cache[0]
        nblocks, bs, hkv, d = kc0.shape
        if not all(
            t.dtype == torch.float32 and t.is_contiguous() and t.shape == kc0.shape
            for t in (*k_cache, *v_cache)
        ):
            return None
        if hkv != r.num_kv_heads or d != r.head_dim:
            return None
        args = native_decode_args(block_tables, seq_lens, bs)
        b = h.shape[0]
        if not args.ok or args.max_block >= nblocks or args.lens.shape[0] != b:
            return None
        positions = positions.to(torch.int64).contiguous()
        slots = slot_mapping.to(torch.int64).contiguous()
        if int(positions.min()) < 0 or int(positions.max()) >= self._rotary_rows:
            return None
        if int(slots.min()) < 0 or int(slots.max()) >= nblocks * bs:
            return None
        h = h.contiguous().clone()
        residual = torch.empty_like(h)
        self._lib.rakis_decode_layers(
            ctypes.addressof(self._layer_array(k_cache, v_cache)),
            r.num_layers,
            h.data_ptr(),
            residual.data_ptr(),
            0,
            positions.data_ptr(),
            slots.data_ptr(),
            args.tables.data_ptr(),
            args.lens.data_ptr(),
            args.tables.shape[1],
            bs,
            self._cos.data_ptr(),
            self._sin.data_ptr(),
            b,
            r.hidden_size,
            r.num_heads,
            r.num_kv_heads,
            r.head_dim,
            r.intermediate,
            float(r.eps),
            float(r.scale),
            torch.get_num_threads(),
        )
        return h, residual
