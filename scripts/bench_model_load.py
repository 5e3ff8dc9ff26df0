"""Per-model start-up and latency: load time and batch-1 decode tokens/s of built-in models.

For each model name (the registry's built-ins by default), in one process: the time to
resolve its files (GGUF already assembled and converted: a cache hit), the time to build
an EngineCore on it (tokenizers, weights, packed copies, KV cache), and batch-1 greedy
decode tokens/s (one request, `--tokens` tokens, timed from the first token to the last,
as in scripts/bench_engine.py). Models run one after the other, so compare them as
ratios from one run. With --json the last line is a JSON object.

    .venv/bin/python scripts/bench_model_load.py [--models gemma3-270m smollm2-135m-instruct] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def batch1_decode(eng, n: int) -> float:
    from engine.core import GenerationRequest, SamplingParams

    s = eng.submit(
        GenerationRequest(
            f"b1-{time.time_ns()}",
            SamplingParams(max_tokens=n, ignore_eos=True),
            prompt="Once upon a time, in a",
        )
    )
    times = [time.perf_counter() for _ in s]
    s.result()
    return (len(times) - 1) / (times[-1] - times[0])


def measure(name: str, threads: int, tokens: int, repeats: int) -> dict:
    from engine.core import EngineCore
    from engine.registry import ModelKind, ModelRegistry

    t0 = time.perf_counter()
    model_dir = ModelRegistry().resolve(name, ModelKind.LLM)
    t1 = time.perf_counter()
    eng = EngineCore(model_dir, num_threads=threads, name=name)
    t2 = time.perf_counter()
    eng.start()
    try:
        batch1_decode(eng, 8)  # warm-up: native kernel build/load, first-call allocations
        rates = [batch1_decode(eng, tokens) for _ in range(repeats)]
    finally:
        eng.stop()
    out = {
        "model": name,
        "architecture": type(eng.runner).__name__,
        "resolve_s": round(t1 - t0, 2),
        "engine_load_s": round(t2 - t1, 2),
        "batch1_decode_tok_s": round(max(rates), 1),
        "batch1_decode_tok_s_all": [round(r, 1) for r in rates],
    }
    del eng
    gc.collect()
    return out


def main() -> None:
    from engine.registry import ModelKind, ModelRegistry

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=ModelRegistry().names(ModelKind.LLM))
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = [measure(m, args.threads, args.tokens, args.repeats) for m in args.models]
    for r in results:
        print(
            f"{r['model']:<24} {r['architecture']:<14} resolve {r['resolve_s']:6.2f} s  "
            f"load {r['engine_load_s']:6.2f} s  batch-1 decode {r['batch1_decode_tok_s']:6.1f} tok/s "
            f"{r['batch1_decode_tok_s_all']}"
        )
    if args.json:
        print(json.dumps({"threads": args.threads, "tokens": args.tokens, "models": results}))


if __name__ == "__main__":
    main()
