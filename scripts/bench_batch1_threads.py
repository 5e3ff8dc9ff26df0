"""Batch-1 decode of one EngineCore, stepped in the calling thread vs on its worker thread.

Why: the engine's worker thread decoded about 3x slower than the same steps driven by
hand in the main thread (docs/benchmarks.md, "Targets of issue 17"). This script shows
the gap and its cause in one run, so a change to threading (OpenMP settings, thread
pools) can be judged by ratios, not by absolute figures on a noisy machine:

1. the caller (this thread) steps the engine;
2. the engine's worker thread runs it with ``--threads`` OpenMP threads (the worker
   pins that count itself: ``engine.devices.own_openmp_team``), while step 1 left the
   caller an OpenMP team of its own: so it is throttled, as the daemon was before the
   fix (one run here: caller 72.4, worker 31.7 tok/s);
3. the caller again while an idle second thread owns an OpenMP team, then after that
   thread exited.

    .venv/bin/python scripts/bench_batch1_threads.py [--quant q4] [--threads 2] [--tokens 64] [--runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = "Once upon a time, in a"


def stepped_in_caller(eng, tokens: int) -> float:
    """Tokens/s with the scheduler driven from this thread (the worker is not started)."""
    from engine.core import GenerationRequest, SamplingParams

    eng.submit(
        GenerationRequest(
            f"main-{time.time_ns()}", SamplingParams(max_tokens=tokens, ignore_eos=True), prompt=PROMPT
        )
    )
    with eng._lock:
        inbox, eng._inbox = eng._inbox, []
    for seq in inbox:
        eng.scheduler.add(seq)
    eng._step()  # prefill
    steps, t0 = 0, time.perf_counter()
    while eng.scheduler.has_work():
        eng._step()
        steps += 1
    return steps / (time.perf_counter() - t0)


def on_worker_thread(eng, tokens: int) -> float:
    """Tokens/s as the daemon and bench_engine.py see them (token events from the worker)."""
    from engine.core import GenerationRequest, SamplingParams

    stream = eng.submit(
        GenerationRequest(
            f"thread-{time.time_ns()}", SamplingParams(max_tokens=tokens, ignore_eos=True), prompt=PROMPT
        )
    )
    times = [time.perf_counter() for _ in stream]
    stream.result()
    return (len(times) - 1) / (times[-1] - times[0])


@contextlib.contextmanager
def _second_openmp_master(torch: Any) -> Iterator[None]:
    """A thread that runs one parallel torch op (so it owns an OpenMP team) and waits."""
    release = threading.Event()

    def idle_master() -> None:
        x = torch.randn(512, 512)
        torch.mm(x, x)
        release.wait()

    t = threading.Thread(target=idle_master, daemon=True)
    t.start()
    time.sleep(0.5)
    try:
        yield
    finally:
        release.set()
        t.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quant", default="q4", help="none (fp32), int8 or q4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    from engine.core import EngineCore
    from engine.model_files import default_llm_dir

    eng = EngineCore(
        default_llm_dir(), num_threads=args.threads, quant=None if args.quant == "none" else args.quant
    )
    import torch

    stepped_in_caller(eng, 8)  # warm-up: first-call allocations and kernel selection
    runs: dict[str, list[float]] = {}
    runs["caller, before any worker"] = [stepped_in_caller(eng, args.tokens) for _ in range(args.runs)]
    eng.start()
    runs[f"worker thread, {args.threads} OpenMP threads"] = [
        on_worker_thread(eng, args.tokens) for _ in range(args.runs)
    ]
    eng.stop()
    # The caller again while an idle second thread owns an OpenMP team, then after that
    # thread exited. Slow only while it lives: the cause is process-wide, libgomp's
    # throttled spin-wait once it manages more threads than there are CPUs (the idle
    # team's pool thread counts), not something about the engine's worker thread.
    if args.threads > 1:
        with _second_openmp_master(torch):
            runs["caller, a 2nd OpenMP master alive"] = [
                stepped_in_caller(eng, args.tokens) for _ in range(args.runs)
            ]
    runs["caller, after it exited"] = [stepped_in_caller(eng, args.tokens) for _ in range(args.runs)]
    print(f"mode {args.quant}, {args.threads} threads, {args.tokens} tokens, {args.runs} runs each")
    first = statistics.median(next(iter(runs.values())))
    for name, values in runs.items():
        med = statistics.median(values)
        listed = ", ".join(f"{x:.1f}" for x in values)
        print(f"{name:36s} {listed} tok/s (median {med:.1f}, {med / first:.2f}x the first)")


if __name__ == "__main__":
    main()
