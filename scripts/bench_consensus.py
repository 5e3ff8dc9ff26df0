"""Clustering time for 10, 100 and 1,000 reveals (384-dim, MiniLM-sized embeddings).

    .venv/bin/python scripts/bench_consensus.py [--repeat 5]

Embeddings are synthetic (one honest cluster plus noise): clustering cost depends
only on the number and size of vectors, not on where they came from.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consensus import find_consensus  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dim", type=int, default=384)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'reveals':>8} {'median ms':>10} {'min ms':>8}  success")
    for n in (10, 100, 1000):
        centre = rng.normal(size=args.dim)
        honest = n * 2 // 3
        emb = {f"{k:05d}": centre + rng.normal(scale=0.2, size=args.dim) for k in range(honest)}
        emb |= {f"{k:05d}": rng.normal(size=args.dim) for k in range(honest, n)}
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            out = find_consensus(emb, quorum=n, sec_distance=0.5, sec_percentage=0.6)
            times.append((time.perf_counter() - t) * 1e3)
        print(f"{n:>8} {statistics.median(times):>10.2f} {min(times):>8.2f}  {out.success}")


if __name__ == "__main__":
    main()
