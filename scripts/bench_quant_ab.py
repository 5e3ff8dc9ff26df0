"""A/B of engine.quant's GEMM against another build of quant_gemm.cpp, in one process.

Why: a kernel change is judged by the ratio of the two builds on the same shapes with
calls alternated, so the shared machine's noise hits both alike. The other build (say
main's) is loaded with ctypes and given the plain blocks (it may predate the 8-row
interleaved layout); this tree's QuantLinear runs with its own kernel layout. Shapes
are SmolLM2-135M's projections (one layer each: they stay in cache, so this times the
arithmetic, not memory; --layers 30 gives each shape 30 distinct weights, called in
turn, so they stream from memory as in a real step) and its Q8_0 vocabulary head.
Minimum of --rounds; times are per call.

    git show MAIN:engine/native/quant_gemm.cpp > /tmp/old.cpp
    g++ -O3 -fno-math-errno -fopenmp -shared -fPIC -std=c++17 /tmp/old.cpp -o /tmp/old.so
    PYTHONPATH=$PWD .venv/bin/python scripts/bench_quant_ab.py /tmp/old.so --threads 2
"""

from __future__ import annotations

import argparse
import ctypes
import time

import torch

from engine import quant

SHAPES = [
    (3072, 576, quant.Q4_1),
    (960, 576, quant.Q4_1),
    (576, 1536, quant.Q4_1),
    (576, 576, quant.Q4_1),
    (49152, 576, quant.Q8_0),
]


def _time_old(lib, wt: int, plains: list, x: torch.Tensor, y: torch.Tensor, threads: int, reps: int) -> float:
    """Seconds per pass of the other build over every weight (plain blocks)."""
    m, k = x.shape
    n = y.shape[1]
    t0 = time.perf_counter()
    for _ in range(reps):
        for plain in plains:
            lib.rakis_qgemm(wt, plain.data_ptr(), x.data_ptr(), k, y.data_ptr(), n, 0, m, n, k, threads)
    return (time.perf_counter() - t0) / reps


def _time_new(lins: list, x: torch.Tensor, reps: int) -> float:
    """Seconds per pass of this tree's QuantLinear over every weight (its kernel layout)."""
    t0 = time.perf_counter()
    for _ in range(reps):
        for lin in lins:
            lin(x)
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old_lib", help="a shared library built from another quant_gemm.cpp")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="1,4,16,32,256")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--layers", type=int, default=1, help="distinct weights per shape, called in turn")
    ap.add_argument("--shapes", default="", help="only shapes whose 'NxK' contains this")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    old = ctypes.CDLL(args.old_lib)  # only its rakis_qgemm: it may predate the other symbols
    old.rakis_qgemm.argtypes = quant.load().rakis_qgemm.argtypes
    old.rakis_qgemm.restype = None
    rows = [int(r) for r in args.rows.split(",")]
    print("| shape (type) | M | old us | new us | speed-up |\n|---|---|---|---|---|")
    for n, k, wt in SHAPES:
        if args.shapes not in f"{n}x{k}":
            continue
        mode = "q4" if wt == quant.Q4_1 else "int8"
        lins = [quant.quantize_linear(mode, torch.randn(n, k) * 0.05) for _ in range(args.layers)]
        plains = [lin.blocks.contiguous() for lin in lins]
        for m in rows:
            x = torch.randn(m, k)
            y = torch.empty(m, n)

            reps = max(2, int(3e6 / (n * m * args.layers)))
            res: dict[str, list[float]] = {"old": [], "new": []}
            for _ in range(args.rounds):
                res["old"].append(_time_old(old, wt, plains, x, y, args.threads, reps))
                res["new"].append(_time_new(lins, x, reps))
            o, nw = min(res["old"]) / args.layers, min(res["new"]) / args.layers
            print(
                f"| {n}x{k} ({'Q4_1' if wt == quant.Q4_1 else 'Q8_0'}) | {m} | {o * 1e6:.0f} | "
                f"{nw * 1e6:.0f} | {o / nw:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
