"""CPU projection benchmark: MKL `F.linear` vs the engine's oneDNN packed-weight path.

Times one decode step's worth of projections of a model shape (default SmolLM2-135M:
30 layers of q/k/v, o, gate/up, down, plus the vocabulary head) at several row counts.
Every layer gets its own random weights, so they stream from memory the way a real
model's do instead of sitting in cache. Both paths run in this one process; the last
column is the speed-up of the path the engine uses (engine/linear.py). The MKL head here
is one unsliced product; the engine's MKL fallback slices it (10-25% faster).

    .venv/bin/python scripts/bench_gemm.py [--threads 2] [--rows 1,4,8,16,32,512] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from engine.linear import Linear  # noqa: E402


def _time(fn, repeat: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rows", default="1,4,8,16,32,512")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--qkv", type=int, default=960, help="fused q/k/v output features")
    ap.add_argument("--intermediate", type=int, default=1536)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    h, inter = args.hidden, args.intermediate
    shapes = [(args.qkv, h), (h, h), (2 * inter, h), (h, inter)]
    weights = [[torch.randn(n, k) for n, k in shapes] for _ in range(args.layers)]
    plain = [[Linear(w, packed=False) for w in ws] for ws in weights]
    packed = [[Linear(w, packed=True) for w in ws] for ws in weights]
    head_w = torch.randn(args.vocab, h)
    head_plain = Linear(head_w, packed=False)
    head_packed = Linear(head_w, packed=True)
    rows_out = []
    print(f"threads {args.threads}, {args.layers} layers, hidden {h}, vocab {args.vocab}; ms per step")
    print(
        f"{'rows':>5} {'layers MKL':>11} {'layers oneDNN':>14} {'head MKL':>9} {'head oneDNN':>12} {'speed-up':>9}"
    )
    for m in (int(x) for x in args.rows.split(",")):
        xs = {k: torch.randn(m, k) for k in {k for _, k in shapes}}

        def layers(lins, xs=xs):
            for row in lins:
                for lin in row:
                    lin(xs[lin.in_features])

        lm = _time(lambda: layers(plain), args.repeat)
        lo = _time(lambda: layers(packed), args.repeat)
        x = xs[h]
        hm = _time(lambda x=x: head_plain(x), args.repeat)
        ho = _time(lambda x=x: head_packed(x), args.repeat)
        # F.linear reference check so a broken path cannot look fast
        torch.testing.assert_close(head_packed(x), F.linear(x, head_w), rtol=1e-4, atol=1e-3)
        r = {
            "rows": m,
            "layers_mkl_ms": lm * 1e3,
            "layers_onednn_ms": lo * 1e3,
            "head_mkl_ms": hm * 1e3,
            "head_onednn_ms": ho * 1e3,
            "speedup": (lm + hm) / (lo + ho),
        }
        rows_out.append(r)
        print(
            f"{m:>5} {r['layers_mkl_ms']:>11.1f} {r['layers_onednn_ms']:>14.1f} "
            f"{r['head_mkl_ms']:>9.1f} {r['head_onednn_ms']:>12.1f} {r['speedup']:>8.2f}x",
            flush=True,
        )
    if args.json:
        print(json.dumps({"threads": args.threads, "rows": rows_out}))


if __name__ == "__main__":
    main()
