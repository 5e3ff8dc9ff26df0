"""Embedding throughput of the EmbeddingEngine (default all-MiniLM-L6-v2, offline).

For each batch size B in 1, 8, 32 it measures:
- `job`: one caller embedding B texts per request, back to back (latency-bound);
- `queued`: B callers each embedding one text at once, which the engine's queue
  batches together (what many concurrent verifications look like);
- `st`: sentence-transformers' own `encode` on B texts, the baseline.

Prints texts/s per row. Example:
    .venv/bin/python scripts/bench_embed.py --threads 2 --seconds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio  # noqa: E402
import torch  # noqa: E402

from engine import devices  # noqa: E402
from engine.embedding import EmbeddingEngine  # noqa: E402
from engine.model_files import minilm_dir  # noqa: E402

SENTENCES = [
    "The capital of France is Paris, which lies on the Seine.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "A decentralized network agrees on an answer without trusting any single node.",
    "The quick brown fox jumps over the lazy dog.",
    "Transformers use attention to mix information between tokens in a sequence.",
    "Rain is expected tomorrow afternoon with light winds from the west.",
    "Commit to a hash first, reveal the output later, then compare embeddings.",
    "Binary embeddings keep one sign bit per dimension of the float vector.",
]


def texts(n: int, offset: int = 0) -> list[str]:
    return [f"{SENTENCES[(offset + i) % len(SENTENCES)]} ({offset + i})" for i in range(n)]


async def bench_job(eng: EmbeddingEngine, b: int, seconds: float) -> tuple[float, float]:
    n, lat, t0, i = 0, [], time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        s = time.perf_counter()
        await eng.embed(texts(b, i))
        lat.append(time.perf_counter() - s)
        n += b
        i += b
    return n / (time.perf_counter() - t0), statistics.median(lat)


async def bench_queued(eng: EmbeddingEngine, b: int, seconds: float) -> tuple[float, float]:
    n, lat, t0, i = 0, [], time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        s = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for k in range(b):
                tg.start_soon(eng.embed, texts(1, i + k))
        lat.append(time.perf_counter() - s)
        n += b
        i += b
    return n / (time.perf_counter() - t0), statistics.median(lat)


def bench_st(model, b: int, seconds: float) -> tuple[float, float]:
    n, lat, t0, i = 0, [], time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        s = time.perf_counter()
        model.encode(texts(b, i), batch_size=b, show_progress_bar=False)
        lat.append(time.perf_counter() - s)
        n += b
        i += b
    return n / (time.perf_counter() - t0), statistics.median(lat)


async def main(args: argparse.Namespace) -> None:
    threads = devices.apply_thread_budget(args.threads or devices.thread_budget())
    device = devices.resolve_device(args.device)
    print(f"device={device} torch_threads={threads} seconds_per_row={args.seconds}")
    print(f"{'mode':<8}{'batch':>6}{'texts/s':>12}{'p50 ms':>10}")
    async with EmbeddingEngine(device=device, max_batch_texts=max(args.batch_sizes)) as eng:
        await eng.scale_workers("all-minilm-l6-v2", 1)
        await eng.embed(texts(8))  # warm-up
        for b in args.batch_sizes:
            for mode, fn in (("job", bench_job), ("queued", bench_queued)):
                rate, p50 = await fn(eng, b, args.seconds)
                print(f"{mode:<8}{b:>6}{rate:>12.1f}{p50 * 1000:>10.1f}", flush=True)
    if not args.no_baseline:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(minilm_dir()), device=device)
        st.encode(texts(8), show_progress_bar=False)
        for b in args.batch_sizes:
            rate, p50 = bench_st(st, b, args.seconds)
            print(f"{'st':<8}{b:>6}{rate:>12.1f}{p50 * 1000:>10.1f}", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: thread budget)")
    p.add_argument("--seconds", type=float, default=3.0, help="measuring time per row")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--no-baseline", action="store_true", help="skip the plain sentence-transformers rows")
    a = p.parse_args()
    torch.manual_seed(0)
    anyio.run(main, a, backend="trio")
