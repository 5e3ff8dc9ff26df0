"""Quantized-weight GEMM candidates on SmolLM2-135M's projection shapes (engine.quant).

Times, per row count, one pass over ALL the model's projections (30 layers of q/k/v,
o, gate/up and down, plus the vocabulary head) with distinct random weights per layer,
so the weights stream from memory as they do in a real decode step (one layer alone
would sit in L3 and flatter everyone). Minimum over --reps passes: the shared machine
is noisy and the minimum is the least disturbed pass.

Candidates: fp32 oneDNN packed (today's engine.linear), torch's
`_weight_int8pack_mm` and `_weight_int4pack_mm_for_cpu` (both need bf16 activations
to be fast on CPU), and engine.quant's native Q8_0 / Q4_1 kernel.

    PYTHONPATH=$PWD .venv/bin/python scripts/bench_quant.py --threads 1 --rows 1,4,16,32
"""

from __future__ import annotations

import argparse
import time

import torch

from engine import quant
from engine.linear import make_linear

LAYER_SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536)}
HEAD = (49152, 576)


def _weights(layers: int):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(layers):
        for n, k in LAYER_SHAPES.values():
            out.append(torch.randn(n, k, generator=g) * 0.05)
    out.append(torch.randn(*HEAD, generator=g) * 0.05)
    return out


def _candidates(ws):
    c = {}
    c["fp32 onednn"] = [(make_linear(w), w.shape[1]) for w in ws]
    c["native q8_0"] = [(quant.quantize_linear("int8", w), w.shape[1]) for w in ws]
    c["native q4_1"] = [(quant.quantize_linear("q4", w), w.shape[1]) for w in ws]

    def int8pack(w):
        s = w.abs().amax(1) / 127  # torch's op takes per-channel scales
        q = torch.round(w / s[:, None]).to(torch.int8)
        sb = s.bfloat16()
        return lambda x: torch.ops.aten._weight_int8pack_mm(x.bfloat16(), q, sb).float()

    def int4pack(w):
        n, k = w.shape
        wb = w.reshape(n, k // 32, 32)
        lo, hi = wb.amin(2), wb.amax(2)
        s = ((hi - lo) / 15).clamp_min(1e-8)
        q = torch.round((wb - lo[..., None]) / s[..., None]).clamp(0, 15).to(torch.int32).reshape(n, k)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        sz = torch.stack([s, lo + 8 * s], -1).transpose(0, 1).contiguous().bfloat16()
        return lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x.bfloat16(), packed, 32, sz).float()

    c["torch int8pack (bf16 act)"] = [(int8pack(w), w.shape[1]) for w in ws]
    c["torch int4pack (bf16 act)"] = [(int4pack(w), w.shape[1]) for w in ws]
    return c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", default="1,4,16,32")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    lib = quant.load()
    print(
        f"native path: {quant.ISA_NAMES[lib.rakis_quant_isa()] if lib else 'unavailable'}; threads {a.threads}"
    )
    ws = _weights(a.layers)
    cands = _candidates(ws)
    del ws
    rows = [int(r) for r in a.rows.split(",")]
    print("| candidate | " + " | ".join(f"{m} rows (ms)" for m in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for name, fns in cands.items():
        cells = []
        for m in rows:
            xs = {k: torch.randn(m, k) for k in (576, 1536)}
            with torch.inference_mode():
                best = float("inf")
                for _ in range(a.reps):
                    t = time.perf_counter()
                    for f, k in fns:
                        f(xs[k])
                    best = min(best, time.perf_counter() - t)
            cells.append(best * 1e3)
        print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
