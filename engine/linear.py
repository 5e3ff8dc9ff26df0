"""Dense projections (`y = x @ W.T + b`) with the fastest GEMM this device has.

On CPU, torch's `F.linear` goes to MKL's sgemm. On this project's AMD EPYC (Zen 4)
machines MKL runs its generic path and the decode-sized products (1-32 rows against
the 30 x 4 weight matrices of a small model, plus the 49k-row vocabulary head) reach
only 20-40% of what the cores can do. oneDNN picks its AVX-512 kernels from the ISA,
not the vendor, and with the weight reordered once into its blocked layout it streams
the weights 1.7-3x faster at 1-32 rows, vocabulary head included
(`scripts/bench_gemm.py`, docs/benchmarks.md). Results are the same fp32 dot
products summed in a different order (differences ~1e-6 relative).

`RAKIS_CPU_GEMM=mkl` turns the oneDNN path off (for A/B runs or a torch build
without oneDNN); CUDA always uses `F.linear` (cuBLAS).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.config import env_switches

_DTYPES = (torch.float32, torch.bfloat16)


def onednn_enabled(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether CPU projections of `dtype` go through oneDNN with packed weights."""
    if device.type != "cpu" or dtype not in _DTYPES:
        return False
    if env_switches().cpu_gemm == "mkl":
        return False
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


class Linear:
    """One projection; the weight lives in whatever layout the chosen GEMM wants.

    `weight` stays addressable as a plain tensor only on the F.linear path; the packed
    oneDNN weight is opaque, so callers that need the plain matrix (the tied input
    embedding) keep their own reference.
    """

    __slots__ = ("_w", "_b", "packed", "out_features", "in_features")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, packed: bool) -> None:
        self.out_features, self.in_features = weight.shape
        self._b = bias
        self.packed = packed  # True: oneDNN's packed layout (the fast CPU path)
        self._w = torch.ops.mkldnn._reorder_linear_weight(weight, None) if packed else weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self._w, self._b, "none", [], "")
        return F.linear(x, self._w, self._b)


def make_linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> Linear:
    """A Linear for `weight` `[out, in]` on its own device and dtype."""
    return Linear(weight, bias, packed=onednn_enabled(weight.device, weight.dtype))
