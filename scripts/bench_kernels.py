"""Kernel micro-benchmark: paged attention vs gather-K/V + torch SDPA, and the other ops.

    .venv/bin/python scripts/bench_kernels.py                 # CUDA if present, else CPU
    .venv/bin/python scripts/bench_kernels.py --device cpu --batch 1,4 --context 128,1024

Shapes default to SmolLM2-135M (9 q heads, 3 kv heads, head_dim 64, hidden 576, vocab
49152). On CUDA it times the Triton ops (`kernels.get_ops("cuda")`) against the torch
baseline a model runner would otherwise use: gather each sequence's K/V blocks into a dense
tensor and call `scaled_dot_product_attention`. On CPU it times the torch reference ops
only (the Triton interpreter is a correctness tool, not a speed one) and says that GPU
figures need a GPU. It always prints the HBM-bandwidth bound of batch-1 decode.
Output is Markdown, ready for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels import get_ops
from kernels import reference as ref


@dataclass(frozen=True)
class ModelShape:
    """The dimensions that set kernel cost and the decode bandwidth bound."""

    name: str = "SmolLM2-135M"
    vocab: int = 49152
    hidden: int = 576
    intermediate: int = 1536
    layers: int = 30
    q_heads: int = 9
    kv_heads: int = 3
    head_dim: int = 64
    tied_embeddings: bool = True

    def params(self) -> int:
        d, h = self.head_dim, self.hidden
        attn = h * self.q_heads * d * 2 + h * self.kv_heads * d * 2  # q, o, k, v
        mlp = 3 * h * self.intermediate
        per_layer = attn + mlp + 2 * h
        embed = self.vocab * h
        return self.layers * per_layer + embed * (1 if self.tied_embeddings else 2) + h

    def bytes_per_decode_token(self, elem: int, context: int) -> tuple[int, int]:
        """(weight bytes, KV bytes) read to produce one token at batch 1.

        Every layer weight is read once; the LM head (the tied embedding) is read whole; the
        input embedding is one row (negligible). KV: K and V of every cached position.
        """
        embed = self.vocab * self.hidden
        # Tied: the one embedding matrix is read whole as the LM head. Untied: the input
        # embedding contributes one row only, so leave it out.
        weights = self.params() * elem if self.tied_embeddings else (self.params() - embed) * elem
        kv = self.layers * 2 * self.kv_heads * self.head_dim * elem * context
        return weights, kv


def bandwidth_bound_table(shape: ModelShape, elem: int = 2) -> str:
    gpus = [
        ("H100 SXM (HBM3)", 3.35e12),
        ("H100 PCIe (HBM2e)", 2.0e12),
        ("H200 (HBM3e)", 4.8e12),
        ("A100 80GB", 2.04e12),
    ]
    lines = [
        f"Batch-1 decode bound for {shape.name} ({shape.params() / 1e6:.1f} M params, {elem}-byte weights):",
        "",
        "| GPU | HBM TB/s | context | bytes/token (weights + KV) | min time/token | max tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    for gpu, bw in gpus:
        for ctx in (128, 1024):
            w, kv = shape.bytes_per_decode_token(elem, ctx)
            t = (w + kv) / bw
            lines.append(
                f"| {gpu} | {bw / 1e12:.2f} | {ctx} | {(w + kv) / 1e6:.1f} MB ({w / 1e6:.1f} + {kv / 1e6:.1f}) "
                f"| {t * 1e6:.1f} us | {1 / t:,.0f} |"
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------- timing


def time_fn(device: torch.device, iters: int, fn: Callable[..., object], *args) -> float:
    """Median seconds per call of fn(*args) (args bound here, so no loop-variable closures)."""
    for _ in range(3):
        fn(*args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        times = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*args)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return statistics.median(times)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_cache(shape: ModelShape, batch: int, context: int, block_size: int, dtype, device):
    blocks_per_seq = -(-context // block_size)
    num_blocks = batch * blocks_per_seq + 1
    kc = torch.randn(num_blocks, block_size, shape.kv_heads, shape.head_dim, dtype=dtype, device=device)
    vc = torch.randn_like(kc)
    perm = torch.randperm(num_blocks - 1, device=device)[: batch * blocks_per_seq] + 1
    tables = perm.view(batch, blocks_per_seq).to(torch.int32)
    lens = torch.full((batch,), context, dtype=torch.int32, device=device)
    return kc, vc, tables, lens


def gather_sdpa_decode(q, kc, vc, tables, context, scale):
    """The baseline: dense K/V per sequence, then SDPA (GQA natively)."""
    b = q.shape[0]
    k = kc[tables.long()].reshape(b, -1, kc.shape[2], kc.shape[3])[:, :context].transpose(1, 2)
    v = vc[tables.long()].reshape(b, -1, vc.shape[2], vc.shape[3])[:, :context].transpose(1, 2)
    return F.scaled_dot_product_attention(q[:, :, None], k, v, scale=scale, enable_gqa=True)[:, :, 0]


def gather_sdpa_prefill(q, kc, vc, table, context, scale):
    k = kc[table.long()].reshape(-1, kc.shape[2], kc.shape[3])[:context].transpose(0, 1)[None]
    v = vc[table.long()].reshape(-1, vc.shape[2], vc.shape[3])[:context].transpose(0, 1)[None]
    return F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k, v, is_causal=True, scale=scale, enable_gqa=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu")
    parser.add_argument(
        "--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float16, bfloat16, float32"
    )
    parser.add_argument("--batch", default=None, help="comma list (default CUDA 1,8,32,64; CPU 1,4)")
    parser.add_argument(
        "--context", default=None, help="comma list (default CUDA 128,1024,4096; CPU 128,1024)"
    )
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cuda = torch.cuda.is_available() if args.device == "auto" else args.device.startswith("cuda")
    device = torch.device("cuda" if cuda else "cpu")
    dtypes = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
    dtype = (torch.bfloat16 if cuda else torch.float32) if args.dtype == "auto" else dtypes[args.dtype]
    batches = [int(x) for x in (args.batch or ("1,8,32,64" if cuda else "1,4")).split(",")]
    contexts = [int(x) for x in (args.context or ("128,1024,4096" if cuda else "128,1024")).split(",")]
    iters = args.iters or (50 if cuda else 20)
    ops = get_ops(device)
    shape = ModelShape()
    scale = shape.head_dim**-0.5
    elem = torch.empty((), dtype=dtype).element_size()

    where = torch.cuda.get_device_name(device) if cuda else "CPU (torch reference ops)"
    print(
        f"# Kernel micro-benchmark on {where}, {dtype}, block_size {args.block_size}, backend {ops.backend}"
    )
    print(f"torch {torch.__version__}, {args.threads} CPU threads, median of {iters} runs\n")
    if not cuda:
        print("GPU figures need a CUDA GPU; these are the CPU reference timings only.\n")

    print("## Decode attention (one query token per sequence)\n")
    print("| batch | context | ops.paged_attention_decode | gather + SDPA | speed-up | KV GB/s (ops) |")
    print("|---|---|---|---|---|---|")
    for b in batches:
        for ctx in contexts:
            kc, vc, tables, lens = make_cache(shape, b, ctx, args.block_size, dtype, device)
            q = torch.randn(b, shape.q_heads, shape.head_dim, dtype=dtype, device=device)
            t_ops = time_fn(device, iters, ops.paged_attention_decode, q, kc, vc, tables, lens, scale)
            t_base = time_fn(device, iters, gather_sdpa_decode, q, kc, vc, tables, ctx, scale)
            kv_bytes = 2 * b * ctx * shape.kv_heads * shape.head_dim * elem
            print(
                f"| {b} | {ctx} | {t_ops * 1e6:.1f} us | {t_base * 1e6:.1f} us | {t_base / t_ops:.2f}x "
                f"| {kv_bytes / t_ops / 1e9:.1f} |"
            )

    print("\n## Prefill attention (one prompt, whole prompt as one chunk)\n")
    print("| prompt | ops.paged_attention_prefill | gather + SDPA (causal) | speed-up |")
    print("|---|---|---|---|")
    for ctx in contexts:
        kc, vc, tables, lens = make_cache(shape, 1, ctx, args.block_size, dtype, device)
        q = torch.randn(ctx, shape.q_heads, shape.head_dim, dtype=dtype, device=device)
        cu = torch.tensor([0, ctx], dtype=torch.int32, device=device)
        t_ops = time_fn(device, iters, ops.paged_attention_prefill, q, kc, vc, tables, lens, cu, ctx, scale)
        t_base = time_fn(device, iters, gather_sdpa_prefill, q, kc, vc, tables[0], ctx, scale)
        print(f"| {ctx} | {t_ops * 1e6:.1f} us | {t_base * 1e6:.1f} us | {t_base / t_ops:.2f}x |")

    print("\n## Norm, rotary, cache write, sampling\n")
    print("| op | tokens | ops | torch reference | speed-up |")
    print("|---|---|---|---|---|")
    cos, sin = ref.rotary_cos_sin(torch.rand(shape.head_dim // 2, device=device), 8192)
    for t in batches:
        x = torch.randn(t, shape.hidden, dtype=dtype, device=device)
        w = torch.ones(shape.hidden, dtype=dtype, device=device)
        q = torch.randn(t, shape.q_heads, shape.head_dim, dtype=dtype, device=device)
        k = torch.randn(t, shape.kv_heads, shape.head_dim, dtype=dtype, device=device)
        pos = torch.randint(0, 8192, (t,), device=device)
        kc, vc, _, _ = make_cache(shape, t, 64, args.block_size, dtype, device)
        slots = torch.randperm(kc.shape[0] * kc.shape[1], device=device)[:t]
        logits = torch.randn(t, shape.vocab, device=device)
        rows = [
            ("rms_norm + residual", "rms_norm", (x, w, 1e-5, torch.randn_like(x))),
            ("apply_rotary", "apply_rotary", (q, k, pos, cos, sin)),
            ("store_kv", "store_kv", (k, k, kc, vc, slots)),
            ("sample (T=0.7, top-p 0.9, top-k 50)", "sample", (logits, 0.7, 0.9, 50)),
            ("sample (greedy; ref column: bare argmax)", "sample", (logits, 0.0, 1.0, 0)),
        ]
        for label, name, call_args in rows:
            t_ops = time_fn(device, iters, getattr(ops, name), *call_args)
            baseline = (torch.argmax, logits, -1) if "greedy" in label else (getattr(ref, name), *call_args)
            t_ref = time_fn(device, iters, *baseline)
            print(f"| {label} | {t} | {t_ops * 1e6:.1f} us | {t_ref * 1e6:.1f} us | {t_ref / t_ops:.2f}x |")

    print()
    print(bandwidth_bound_table(shape, elem=2))


if __name__ == "__main__":
    main()
