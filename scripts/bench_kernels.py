"""Kernel micro-benchmark: paged attention vs gather-K/V + torch SDPA, and the other ops.

    .venv/bin/python scripts/bench_kernels.py                 # CUDA if present, else CPU
    .venv/bin/python scripts/bench_kernels.py --device cpu --batch 1,4 --context 128,1024

Shapes default to SmolLM2-135M (9 q heads, 3 kv heads, head_dim 64, hidden 576, vocab
49152). On CUDA it times the Triton ops (`engine.kernels.get_ops("cuda")`) against the torch
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

from engine.kernels import get_ops
from engine.kernels import reference as ref


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


class SyntheticDecoder:
    """A SmolLM2-shaped Llama decode step with random weights, built only from `ops`.

    It measures what the kernels and the CUDA-graph runner buy for a whole step (30 layers,
    ~340 launches) without depending on the engine: eager step time vs graph replay, and
    how far batch 1 is from the HBM bound.
    """

    def __init__(
        self, shape: ModelShape, ops, dtype, device, *, max_batch: int, max_context: int, block_size: int
    ):
        self.shape, self.ops, self.dtype, self.device = shape, ops, dtype, device
        self.block_size = block_size
        h, d, hq, hkv, inter = shape.hidden, shape.head_dim, shape.q_heads, shape.kv_heads, shape.intermediate

        def w(*dims):
            return (torch.randn(*dims, device=device) * dims[-1] ** -0.5).to(dtype)

        self.embed = w(shape.vocab, h)
        self.layers = [
            dict(
                w_in=torch.ones(h, dtype=dtype, device=device),
                w_qkv=w((hq + 2 * hkv) * d, h),
                w_o=w(h, hq * d),
                w_post=torch.ones(h, dtype=dtype, device=device),
                w_gu=w(2 * inter, h),
                w_down=w(h, inter),
            )
            for _ in range(shape.layers)
        ]
        self.norm = torch.ones(h, dtype=dtype, device=device)
        self.blocks_per_seq = -(-max_context // block_size)
        num_blocks = max_batch * self.blocks_per_seq + 1
        self.k_cache = [
            torch.zeros(num_blocks, block_size, hkv, d, dtype=dtype, device=device) for _ in self.layers
        ]
        self.v_cache = [torch.zeros_like(c) for c in self.k_cache]
        inv_freq = 1.0 / (100000 ** (torch.arange(0, d, 2, device=device).float() / d))
        self.cos, self.sin = ref.rotary_cos_sin(inv_freq, max_context + 1)

    def inputs(self, batch: int, context: int):
        """Step inputs for `batch` sequences that already hold `context - 1` tokens."""
        dev = self.device
        tables = (torch.arange(batch * self.blocks_per_seq, device=dev) + 1).view(batch, -1).to(torch.int32)
        pos = torch.full((batch,), context - 1, dtype=torch.int64, device=dev)
        blk = tables[:, (context - 1) // self.block_size].long()
        slots = blk * self.block_size + (context - 1) % self.block_size
        lens = torch.full((batch,), context, dtype=torch.int32, device=dev)
        ids = torch.randint(0, self.shape.vocab, (batch,), device=dev)
        return ids, pos, slots, tables, lens

    def forward(self, input_ids, positions, slot_mapping, block_tables, seq_lens):
        ops, sh = self.ops, self.shape
        t = input_ids.shape[0]
        hq, hkv, d, inter = sh.q_heads, sh.kv_heads, sh.head_dim, sh.intermediate
        x = F.embedding(input_ids, self.embed)
        residual = None
        for i, L in enumerate(self.layers):
            hdn, residual = ops.rms_norm(x, L["w_in"], 1e-5, residual)
            qkv = F.linear(hdn, L["w_qkv"])
            q = qkv[:, : hq * d].view(t, hq, d)
            k = qkv[:, hq * d : (hq + hkv) * d].view(t, hkv, d)
            v = qkv[:, (hq + hkv) * d :].view(t, hkv, d)
            ops.apply_rotary(q, k, positions, self.cos, self.sin)
            ops.store_kv(k, v, self.k_cache[i], self.v_cache[i], slot_mapping)
            o = ops.paged_attention_decode(
                q, self.k_cache[i], self.v_cache[i], block_tables, seq_lens, d**-0.5
            )
            x = F.linear(o.reshape(t, hq * d), L["w_o"])
            hdn, residual = ops.rms_norm(x, L["w_post"], 1e-5, residual)
            gu = F.linear(hdn, L["w_gu"])
            x = F.linear(F.silu(gu[:, :inter]) * gu[:, inter:], L["w_down"])
        x, _ = ops.rms_norm(x, self.norm, 1e-5, residual)
        return F.linear(x, self.embed)


def bench_decode_step(
    shape: ModelShape, ops, dtype, device, batches, context: int, block_size: int, iters: int
):
    from engine.kernels.cuda_graphs import DecodeGraphRunner

    cuda = device.type == "cuda"
    model = SyntheticDecoder(
        shape, ops, dtype, device, max_batch=max(batches), max_context=context, block_size=block_size
    )
    runner = DecodeGraphRunner(
        model.forward,
        max_batch_size=max(batches),
        max_blocks_per_seq=model.blocks_per_seq,
        device=device,
        buckets=batches,
    )
    if cuda:
        runner.capture()
    elem = torch.empty((), dtype=dtype).element_size()
    w_bytes, kv_bytes = shape.bytes_per_decode_token(elem, context)
    print(f"\n## Whole decode step, synthetic {shape.name} (random weights, {dtype}), context {context}\n")
    print("| batch | eager step | CUDA-graph step | tokens/s (graph) | batch-1 % of HBM-bound step |")
    print("|---|---|---|---|---|")
    for b in batches:
        args = model.inputs(b, context)
        t_eager = time_fn(device, iters, model.forward, *args)
        t_graph = time_fn(device, iters, runner, *args) if cuda else float("nan")
        bound = ""
        if cuda and b == 1:
            bw = _hbm_bandwidth(device)
            if bw:
                bound = f"{(w_bytes + kv_bytes) / bw / t_graph * 100:.0f}% (HBM {bw / 1e12:.2f} TB/s)"
        graph_col = f"{t_graph * 1e6:.0f} us" if cuda else "n/a (CPU)"
        tps = b / (t_graph if cuda else t_eager)
        print(f"| {b} | {t_eager * 1e6:.0f} us | {graph_col} | {tps:,.1f} | {bound} |")


def _hbm_bandwidth(device) -> float | None:
    """Nominal HBM bandwidth of known GPUs (bytes/s), by device name; None if unknown."""
    name = torch.cuda.get_device_name(device).upper()
    for key, bw in (("H200", 4.8e12), ("H100 PCIE", 2.0e12), ("H100", 3.35e12), ("A100", 2.04e12)):
        if key in name:
            return bw
    return None


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
    parser.add_argument(
        "--decode-step",
        action="store_true",
        help="also time the synthetic whole decode step on CPU (always on CUDA)",
    )
    parser.add_argument(
        "--step-context", type=int, default=512, help="context length for the decode-step bench"
    )
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

    if cuda or args.decode_step:
        bench_decode_step(shape, ops, dtype, device, batches, args.step_context, args.block_size, iters)

    print()
    print(bandwidth_bound_table(shape, elem=2))


if __name__ == "__main__":
    main()
