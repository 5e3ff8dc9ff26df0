"""Quantized weights that stay quantized: int8 and 4-bit projections for CPU decode.

Batch-1 decode on CPU is bound by streaming the weights: SmolLM2-135M is 540 MB in
fp32 per token, 143 MB as Q8_0 and 96 MB as q4 (66 MB of Q4_1 layers and the
30 MB Q8_0 vocabulary head). `QuantLinear` keeps a projection's
weight in GGML's block formats (32 weights per block, fp16 scales; layout in
engine/native/quant_gemm.cpp) and multiplies with the native kernel, which quantizes
the activations to int8 blocks and uses VNNI / AVX2 integer dot products, chosen at
run time from the CPU's flags (scalar C++ elsewhere). Where out_features % 8 == 0 the
weight is kept only as eight rows interleaved (`interleave8`), so one integer dot
product serves eight rows when the GEMM is compute bound (prefill, decode batches).

Where the weights come from:
- a GGUF file: its Q4_0 / Q4_1 / Q8_0 blocks are taken as they are (Q4_0 rewritten
  as Q4_1 with m = -8d, exactly), only rows reordered where llama.cpp's converter
  permuted q/k for its rotary layout (`gguf_quant_weights`);
- anything else (fp32/bf16 checkpoints, GGUF tensors of other types): quantized on
  load, Q8_0 for `int8`, Q4_1 for `q4` (`quantize_q8_0`, `quantize_q4_1`).

Modes (`WEIGHT_MODES`): `int8` (Q8_0 everywhere), `q4` (the GGUF's own 4-bit blocks,
Q4_1 elsewhere; the vocabulary head stays Q8_0 as llama.cpp ships it). fp32 stays the
exactness reference; agreement and perplexity per mode are in docs/benchmarks.md
(`scripts/quant_quality.py`).

Without a C++ compiler `make_quant_linear` returns a plain fp32 Linear of the
dequantized weight (same numbers up to activation rounding, no memory saving).
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np
import torch

from engine import native
from engine.config import env_switches
from engine.linear import Linear, make_linear

log = logging.getLogger(__name__)

SOURCE = Path(native.__file__).with_name("quant_gemm.cpp")
# No -march=native: the SIMD paths are picked at run time, so the build is portable.
CFLAGS = ("-O3", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC", "-std=c++17")

Q4_1, Q8_0 = 0, 1  # the kernel's weight types
Q4_1X8, Q8_0X8 = 2, 3  # the same blocks, eight rows interleaved (`interleave8`)
INTERLEAVED = {Q4_1: Q4_1X8, Q8_0: Q8_0X8}
BLOCK = 32
BLOCK_BYTES = {Q4_1: 20, Q8_0: 34}
_SCALE_BYTES = {Q4_1: 4, Q8_0: 2}  # fp16 d (and m) ahead of each block's quants
WEIGHT_MODES = ("int8", "q4")
ENV_QUANT = "RAKIS_QUANT"
ISA_NAMES = {0: "scalar", 1: "avx2", 2: "avx512-vnni"}


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    fn = lib.rakis_qgemm
    fn.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_longlong,
        ctypes.c_void_p,
        ctypes.c_longlong,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
    ]
    fn.restype = None
    lib.rakis_quant_isa.argtypes = []
    lib.rakis_quant_isa.restype = ctypes.c_int
    lib.rakis_quant_force_isa.argtypes = [ctypes.c_int]
    lib.rakis_quant_force_isa.restype = None
    lib.rakis_quantize_rows.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int] + [ctypes.c_void_p] * 3
    lib.rakis_quantize_rows.restype = None
    return lib


def load() -> ctypes.CDLL | None:
    """The quantized-GEMM library, built once per CPU; None when it cannot be built."""
    return native.load_library(SOURCE, CFLAGS, _declare, "rakis_quant")


def resolve_weight_mode(mode: str | None = None) -> str | None:
    """`int8` / `q4`, or None for the compute dtype's own weights; RAKIS_QUANT when None."""
    if mode is None:
        mode = env_switches().quant or "none"
    m = mode.strip().lower()
    if m in ("", "none", "off", "fp32", "float32", "bf16", "bfloat16", "auto"):
        return None
    if m not in WEIGHT_MODES:
        raise ValueError(f"unknown weight quantization {mode!r}; use one of: none, {', '.join(WEIGHT_MODES)}")
    return m


def split_model_dtype(name: str | None) -> tuple[str | None, str | None]:
    """A model's configured dtype (`fp32 | bf16 | int8 | q4`, or any name
    engine.devices.resolve_dtype takes) -> (compute dtype name for resolve_dtype,
    weight quantization for LlamaRunner's `quant`). Quantized modes compute in float32.
    """
    if name is None:
        return None, None
    key = name.strip().lower()
    if key in WEIGHT_MODES:
        return "float32", key
    return name, "none"


# ------------------------------------------------------------------ block formats (numpy)


def _f16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).view(np.uint16)


def quantize_q8_0(w: torch.Tensor) -> np.ndarray:
    """`w` [N, K] -> Q8_0 blocks as uint8 [N, K/32*34] (llama.cpp's rounding)."""
    x = w.detach().float().cpu().numpy().reshape(w.shape[0], -1, BLOCK)
    amax = np.abs(x).max(axis=2, keepdims=True)
    d = (amax / 127.0).astype(np.float32)
    inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1), 0)
    q = np.clip(np.rint(x * inv), -127, 127).astype(np.int8)
    out = np.empty((x.shape[0], x.shape[1], 34), dtype=np.uint8)
    out[:, :, 0:2] = _f16(d).view(np.uint8).reshape(x.shape[0], x.shape[1], 2)
    out[:, :, 2:] = q.view(np.uint8)
    return out.reshape(x.shape[0], -1)


def quantize_q4_1(w: torch.Tensor) -> np.ndarray:
    """`w` [N, K] -> Q4_1 blocks as uint8 [N, K/32*20] (min/max per block)."""
    x = w.detach().float().cpu().numpy().reshape(w.shape[0], -1, BLOCK)
    lo, hi = x.min(axis=2, keepdims=True), x.max(axis=2, keepdims=True)
    d = ((hi - lo) / 15.0).astype(np.float32)
    d16 = d.astype(np.float16).astype(np.float32)
    m16 = lo.astype(np.float16).astype(np.float32)
    inv = np.where(d16 > 0, 1.0 / np.where(d16 > 0, d16, 1), 0)
    q = np.clip(np.rint((x - m16) * inv), 0, 15).astype(np.uint8)
    out = np.empty((x.shape[0], x.shape[1], 20), dtype=np.uint8)
    out[:, :, 0:2] = _f16(d).view(np.uint8).reshape(x.shape[0], x.shape[1], 2)
    out[:, :, 2:4] = _f16(lo).view(np.uint8).reshape(x.shape[0], x.shape[1], 2)
    out[:, :, 4:] = q[:, :, :16] | (q[:, :, 16:] << 4)
    return out.reshape(x.shape[0], -1)


def q4_0_to_q4_1(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 blocks (fp16 d, 16 nibble bytes; w = d (q - 8)) -> Q4_1 with m = -8d (exact)."""
    b = blocks.reshape(blocks.shape[0], -1, 18)
    d = b[:, :, 0:2].copy().view(np.float16)
    out = np.empty((b.shape[0], b.shape[1], 20), dtype=np.uint8)
    out[:, :, 0:2] = b[:, :, 0:2]
    out[:, :, 2:4] = (d.astype(np.float32) * -8.0).astype(np.float16).view(np.uint8)
    out[:, :, 4:] = b[:, :, 2:]
    return out.reshape(b.shape[0], -1)


def interleave8(wtype: int, blocks: np.ndarray) -> np.ndarray:
    """Plain blocks [N, nb * bytes] (N % 8 == 0) -> the kernel's 8-row layout [N/8, nb * 8 * bytes].

    Why: the GEMM is compute bound at 16+ activation rows, and with eight rows' weights
    side by side one 32-byte integer dot product serves eight rows (the layout is
    described in engine/native/quant_gemm.cpp). Per group g and block b: the eight
    rows' fp16 d (then m for Q4_1), then 32-byte chunks c holding qs[row][4c:4c+4] of
    rows 0..7. Same bytes, reordered: `deinterleave8` undoes it exactly.
    """
    n = blocks.shape[0]
    if n % 8 or wtype not in INTERLEAVED:
        raise ValueError(f"cannot interleave {n} rows of type {wtype} in groups of 8")
    bb, sb = BLOCK_BYTES[wtype], _SCALE_BYTES[wtype]
    b = blocks.reshape(n // 8, 8, -1, bb).transpose(0, 2, 1, 3)  # [G, nb, 8 rows, bytes]
    g, nb = b.shape[0], b.shape[1]
    scales = b[..., :sb].reshape(g, nb, 8, sb // 2, 2).transpose(0, 1, 3, 2, 4)  # d[8] then m[8]
    qs = b[..., sb:].reshape(g, nb, 8, -1, 4).transpose(0, 1, 3, 2, 4)  # [G, nb, chunk, row, 4]
    out = np.concatenate([scales.reshape(g, nb, -1), qs.reshape(g, nb, -1)], axis=2)
    return np.ascontiguousarray(out.reshape(g, nb * 8 * bb))


def deinterleave8(wtype: int, packed: np.ndarray) -> np.ndarray:
    """The exact inverse of `interleave8`: [N/8, nb * 8 * bytes] -> plain [N, nb * bytes]."""
    bb, sb = BLOCK_BYTES[wtype], _SCALE_BYTES[wtype]
    g = packed.shape[0]
    p = packed.reshape(g, -1, 8 * bb)
    nb = p.shape[1]
    scales = p[..., : 8 * sb].reshape(g, nb, sb // 2, 8, 2).transpose(0, 1, 3, 2, 4).reshape(g, nb, 8, sb)
    qs = p[..., 8 * sb :].reshape(g, nb, -1, 8, 4).transpose(0, 1, 3, 2, 4).reshape(g, nb, 8, bb - sb)
    b = np.concatenate([scales, qs], axis=3).transpose(0, 2, 1, 3)  # [G, 8 rows, nb, bytes]
    return np.ascontiguousarray(b.reshape(g * 8, nb * bb))


def dequantize(wtype: int, blocks: np.ndarray | torch.Tensor, k: int) -> torch.Tensor:
    """The fp32 matrix [N, k] that `blocks` encode: the reference the kernel is tested against."""
    raw = blocks.numpy() if isinstance(blocks, torch.Tensor) else blocks
    n = raw.shape[0]
    b = raw.reshape(n, k // BLOCK, BLOCK_BYTES[wtype])
    d = b[:, :, 0:2].copy().view(np.float16).astype(np.float32)
    if wtype == Q8_0:
        q = b[:, :, 2:].copy().view(np.int8).astype(np.float32)
        return torch.from_numpy((d * q).reshape(n, k))
    m = b[:, :, 2:4].copy().view(np.float16).astype(np.float32)
    qs = b[:, :, 4:]
    q = np.concatenate([qs & 15, qs >> 4], axis=2).astype(np.float32)
    return torch.from_numpy((d * q + m).reshape(n, k))


# ------------------------------------------------------------------ the projection


class QuantLinear:
    """Drop-in for engine.linear.Linear with the weight in Q4_1 or Q8_0 blocks.

    `packed` is True like oneDNN's packed Linear: the weight is not a plain matrix.
    When out_features % 8 == 0 only the 8-row interleaved copy is kept (`kernel_blocks`,
    type `kernel_wtype`, see `interleave8`); `blocks` and `wtype` still describe the
    plain GGML blocks (deinterleaved on demand, for tests and dequantizing).
    """

    __slots__ = (
        "kernel_blocks",
        "kernel_wtype",
        "wtype",
        "_b",
        "out_features",
        "in_features",
        "_lib",
        "packed",
    )

    def __init__(
        self,
        wtype: int,
        blocks: np.ndarray | torch.Tensor,
        in_features: int,
        bias: torch.Tensor | None,
        lib: ctypes.CDLL,
    ) -> None:
        if in_features % BLOCK:
            raise ValueError(f"in_features {in_features} is not a multiple of {BLOCK}")
        t = (
            torch.from_numpy(np.ascontiguousarray(blocks))
            if isinstance(blocks, np.ndarray)
            else blocks.contiguous()
        )
        if t.dtype != torch.uint8 or t.dim() != 2 or t.shape[1] != in_features // BLOCK * BLOCK_BYTES[wtype]:
            raise ValueError(
                f"blocks {tuple(t.shape)} {t.dtype} do not fit type {wtype} with K={in_features}"
            )
        self.wtype = wtype
        self.out_features, self.in_features = t.shape[0], in_features
        if t.shape[0] % 8 == 0 and t.shape[0]:
            self.kernel_wtype = INTERLEAVED[wtype]
            self.kernel_blocks = torch.from_numpy(interleave8(wtype, t.numpy()))
        else:  # no whole groups of eight rows: the plain kernels
            self.kernel_wtype, self.kernel_blocks = wtype, t
        self._b = None if bias is None else bias.detach().float().contiguous()
        self._lib = lib
        self.packed = True

    @property
    def blocks(self) -> torch.Tensor:
        """The plain GGML blocks [N, K/32 * bytes] of `wtype` (a copy when interleaved)."""
        if self.kernel_wtype == self.wtype:
            return self.kernel_blocks
        return torch.from_numpy(deinterleave8(self.wtype, self.kernel_blocks.numpy()))

    @property
    def nbytes(self) -> int:
        return self.kernel_blocks.numel()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"QuantLinear wants fp32 [M, {self.in_features}], got {x.dtype} {tuple(x.shape)}"
            )
        if x.stride(1) != 1:
            x = x.contiguous()
        m = x.shape[0]
        y = torch.empty((m, self.out_features), dtype=torch.float32)
        if m:
            self._lib.rakis_qgemm(
                self.kernel_wtype,
                self.kernel_blocks.data_ptr(),
                x.data_ptr(),
                x.stride(0),
                y.data_ptr(),
                self.out_features,
                0 if self._b is None else self._b.data_ptr(),
                m,
                self.out_features,
                self.in_features,
                torch.get_num_threads(),
            )
        return y


def make_quant_linear(
    wtype: int, blocks: np.ndarray, in_features: int, bias: torch.Tensor | None = None
) -> QuantLinear | Linear:
    """A QuantLinear, or (no native kernel here) an fp32 Linear of the dequantized weight."""
    lib = load()
    if lib is None:
        return make_linear(dequantize(wtype, blocks, in_features), bias)
    return QuantLinear(wtype, blocks, in_features, bias, lib)


def quantize_linear(
    mode: str, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> QuantLinear | Linear:
    """Quantize an fp32/bf16 `weight` [N, K] on load: Q8_0 for int8, Q4_1 for q4."""
    if weight.dim() != 2 or weight.shape[1] % BLOCK:
        raise ValueError(
            f"weight {tuple(weight.shape)}: in_features must be a multiple of {BLOCK} to quantize"
        )
    if mode == "int8":
        return make_quant_linear(Q8_0, quantize_q8_0(weight), weight.shape[1], bias)
    if mode == "q4":
        return make_quant_linear(Q4_1, quantize_q4_1(weight), weight.shape[1], bias)
    raise ValueError(f"unknown weight quantization {mode!r}")


# ------------------------------------------------------------------ GGUF blocks


def _reverse_permute_rows(n_rows: int, n_head: int) -> np.ndarray:
    """Row order that undoes llama.cpp's q/k permutation (as transformers' GGUF loader does)."""
    idx = np.arange(n_rows)
    return idx.reshape(n_head, n_rows // n_head // 2, 2).swapaxes(1, 2).reshape(n_rows)


def gguf_quant_weights(
    gguf_path: str | Path, num_heads: int, num_kv_heads: int
) -> dict[str, tuple[int, np.ndarray]]:
    """Linear weights of a Llama-family GGUF kept in their blocks, by llama.cpp name.

    Returns {"blk.0.attn_q": (wtype, uint8 blocks [N, bytes]), ..., "output": ...};
    only Q4_0, Q4_1 and Q8_0 tensors (others are left to the caller to quantize).
    "output" is the token embedding when the file has no separate output tensor.
    """
    from gguf import GGMLQuantizationType as T
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    out: dict[str, tuple[int, np.ndarray]] = {}
    tensors = {t.name: t for t in reader.tensors}
    for name, t in tensors.items():
        if not name.endswith(".weight"):
            continue
        base = name[: -len(".weight")]
        if not (base.startswith("blk.") or base in ("output", "token_embd")):
            continue
        if base.endswith(("_norm",)) or base.endswith("norm"):
            continue
        data = np.asarray(t.data)
        if t.tensor_type == T.Q4_1:
            wtype, blocks = Q4_1, data
        elif t.tensor_type == T.Q8_0:
            wtype, blocks = Q8_0, data
        elif t.tensor_type == T.Q4_0:
            wtype, blocks = Q4_1, q4_0_to_q4_1(data)
        else:
            continue
        blocks = blocks.reshape(data.shape[0], -1)
        if base.endswith(".attn_q"):
            blocks = blocks[_reverse_permute_rows(blocks.shape[0], num_heads)]
        elif base.endswith(".attn_k"):
            blocks = blocks[_reverse_permute_rows(blocks.shape[0], num_kv_heads)]
        out[base] = (wtype, np.array(blocks, order="C", copy=True))  # own memory, not the file map
    if "output" not in out and "output.weight" not in tensors and "token_embd" in out:
        out["output"] = out["token_embd"]
    out.pop("token_embd", None)
    return out


def gguf_source(model_dir: str | Path) -> Path | None:
    """The GGUF file a converted model directory came from, when it can still be found."""
    p = Path(model_dir)
    if p.is_file() and p.suffix == ".gguf":
        return p
    marker = p / ".rakis-converted"
    if not marker.is_file():
        return None
    name = marker.read_text().strip()
    cand = Path(name)
    if cand.is_absolute() and cand.is_file():
        return cand
    try:  # conversions written before the marker held a path: the default model's file
        from engine.model_files import smollm2_gguf_path

        default = smollm2_gguf_path()
    except FileNotFoundError:
        return None
    return default if default.name == name else None


def quantized_projection(
    mode: str,
    blocks: list[tuple[int, np.ndarray] | None],
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    head: bool = False,
) -> QuantLinear | Linear:
    """One (possibly fused) projection in `mode`, from the GGUF's own `blocks` of its
    parts when they all exist, share one type and encode `weight` (the loader's fp32
    copy, checked so a wrong row order can never slip through); else quantized from
    `weight`. The vocabulary head (`head`) is Q8_0 unless the file gives its blocks."""
    n, k = weight.shape
    if k % BLOCK:  # no block format fits: this projection stays fp32
        log.warning("in_features %d is not a multiple of %d; projection kept in fp32", k, BLOCK)
        return make_linear(weight.detach().float().contiguous(), bias)
    if blocks and all(b is not None for b in blocks) and len({b[0] for b in blocks}) == 1:
        wtype = blocks[0][0]
        cat = np.concatenate([b[1] for b in blocks], 0) if len(blocks) > 1 else blocks[0][1]
        if cat.shape == (n, k // BLOCK * BLOCK_BYTES[wtype]):
            rows = slice(0, min(n, 64))
            ref = dequantize(wtype, cat[rows], k)
            if torch.allclose(ref, weight[rows].detach().float().cpu(), rtol=1e-3, atol=1e-5):
                return make_quant_linear(wtype, cat, k, bias)
            log.warning("GGUF blocks do not match the loaded weights; quantizing from fp32 instead")
    return quantize_linear("int8" if head else mode, weight, bias)
