"""CPU decode attention: the native paged kernel vs the torch gather + SDPA path.

Both read the same paged K/V cache ([num_blocks, block_size, Hkv, D], random block
tables, mixed lengths). Several layers' caches are cycled so K/V stream from memory as
in a model step. Prints microseconds per layer call and the speed-up; both paths run in
this one process.

    .venv/bin/python scripts/bench_attention.py [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engine import native  # noqa: E402
from engine.attention import _native_decode, paged_attention_decode  # noqa: E402

SHAPES = [(1, 200), (4, 150), (8, 400), (16, 400), (32, 60), (32, 150), (32, 1024)]


def _time(fn, repeat: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--q-heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--layers", type=int, default=6, help="distinct caches cycled per timing")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lib = native.load()
    if lib is None:
        sys.exit("native kernel unavailable here (no C++ compiler, or RAKIS_NATIVE=0)")
    fast = _native_decode(lib)
    hq, hkv, d, bs = args.q_heads, args.kv_heads, args.head_dim, args.block_size
    scale = d**-0.5
    print(f"threads {args.threads}, {hq} q heads / {hkv} kv heads x {d}, block {bs}; us per layer")
    print(f"{'batch':>5} {'context':>7} {'gather+SDPA':>12} {'native':>8} {'speed-up':>9}")
    out = []
    for b, ctx in SHAPES:
        nb = -(-ctx // bs)
        nblocks = b * nb + 8
        caches = [
            (torch.randn(nblocks, bs, hkv, d), torch.randn(nblocks, bs, hkv, d)) for _ in range(args.layers)
        ]
        tables = torch.randperm(nblocks)[: b * nb].to(torch.int32).reshape(b, nb)
        lens = torch.randint(max(1, ctx // 2), ctx + 1, (b,), dtype=torch.int32)
        lens[0] = ctx
        q = torch.randn(b, hq, d)
        kc, vc = caches[0]
        torch.testing.assert_close(
            fast(q, kc, vc, tables, lens, scale),
            paged_attention_decode(q, kc, vc, tables, lens, scale),
            rtol=1e-5,
            atol=2e-6,
        )

        def run(fn, q=q, tables=tables, lens=lens, caches=caches):
            for kc, vc in caches:
                fn(q, kc, vc, tables, lens, scale)

        t_torch = _time(lambda run=run: run(paged_attention_decode), args.repeat) / args.layers
        t_native = _time(lambda run=run: run(fast), args.repeat) / args.layers
        r = {
            "batch": b,
            "context": ctx,
            "torch_us": t_torch * 1e6,
            "native_us": t_native * 1e6,
            "speedup": t_torch / t_native,
        }
        out.append(r)
        print(
            f"{b:>5} {ctx:>7} {r['torch_us']:>12.0f} {r['native_us']:>8.0f} {r['speedup']:>8.2f}x", flush=True
        )
    if args.json:
        print(json.dumps({"threads": args.threads, "rows": out}))


if __name__ == "__main__":
    main()
