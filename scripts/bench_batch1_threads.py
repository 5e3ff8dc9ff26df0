"""Batch-1 decode of one EngineCore, stepped in the calling thread vs on its worker thread.

Why: the engine's worker thread decoded about 3x slower than the same steps driven by
hand in the main thread (docs/benchmarks.md, "Targets of issue 17"). This script shows
the gap in one run, so a change to threading (OpenMP settings, thread pools) can be
judged by the ratio, not by absolute figures on a noisy machine.

    .venv/bin/python scripts/bench_batch1_threads.py [--quant q4] [--threads 2] [--tokens 64] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

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
    caller = [stepped_in_caller(eng, args.tokens) for _ in range(args.runs)]
    eng.start()
    worker = [on_worker_thread(eng, args.tokens) for _ in range(args.runs)]
    eng.stop()
    med_c, med_w = statistics.median(caller), statistics.median(worker)
    print(f"mode {args.quant}, {args.threads} threads, {args.tokens} tokens, {args.runs} runs each")
    print(
        f"stepped in the calling thread: {', '.join(f'{x:.1f}' for x in caller)} tok/s (median {med_c:.1f})"
    )
    print(
        f"on the worker thread:          {', '.join(f'{x:.1f}' for x in worker)} tok/s (median {med_w:.1f})"
    )
    print(f"worker / caller: {med_w / med_c:.2f}x")


if __name__ == "__main__":
    main()
