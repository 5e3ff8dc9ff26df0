"""Measure the identity puzzle's solve time per difficulty on this machine.

Solves the puzzle for several random keys at each difficulty (one core), prints the
hash rate and the mean solve time, and extrapolates the mean time for higher
difficulties from the measured rate (the solve time is geometric with mean
2**difficulty hashes). Used to pick ``consensus.puzzle.DEFAULT_DIFFICULTY``.

    python scripts/bench_puzzle.py [--difficulties 12 14 16 18] [--keys 8] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time

from consensus import puzzle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--difficulties", type=int, nargs="+", default=[12, 14, 16, 18])
    ap.add_argument("--keys", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    total_hashes = 0
    total_s = 0.0
    for d in args.difficulties:
        times, hashes = [], []
        for k in range(args.keys):
            key = hashlib.sha256(f"bench key {d} {k}".encode()).digest()
            t0 = time.perf_counter()
            nonce = puzzle.solve(key, d)
            times.append(time.perf_counter() - t0)
            hashes.append(nonce + 1)
            assert puzzle.verify(key, nonce, d)
        total_hashes += sum(hashes)
        total_s += sum(times)
        rows.append(
            {
                "difficulty": d,
                "keys": args.keys,
                "mean_solve_s": statistics.fmean(times),
                "mean_hashes": statistics.fmean(hashes),
                "expected_hashes": puzzle.expected_hashes(d),
            }
        )
    rate = total_hashes / total_s
    extrapolated = {d: puzzle.expected_hashes(d) / rate for d in range(20, 31)}
    for r in rows:
        print(
            f"difficulty {r['difficulty']:2d}: mean solve {r['mean_solve_s']:.3f} s over {r['keys']} keys "
            f"(mean {r['mean_hashes']:.0f} hashes, expected {r['expected_hashes']})"
        )
    print(f"hash rate: {rate / 1e6:.2f} M hashes/s (one core)")
    for d, s in extrapolated.items():
        print(f"difficulty {d}: expected mean solve {s:.1f} s")
    if args.json:
        print(
            json.dumps(
                {
                    "hash_rate_per_s": rate,
                    "measured": rows,
                    "extrapolated_mean_s": {str(d): s for d, s in extrapolated.items()},
                }
            )
        )


if __name__ == "__main__":
    main()
