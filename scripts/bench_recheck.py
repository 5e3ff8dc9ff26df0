#!/usr/bin/env python
"""Re-check time against generation time for the default model, printed as JSON.

Generates N chat answers (batched, verifiable sampling at the given temperature),
then re-checks them on the same engine: one teacher-forced prefill pass per
output, batched, sharing the prompt blocks. Reports both wall times, tokens per
second, and their ratio, in wall time and in process CPU time (all threads; the
better figure on a shared machine, where wall time mostly measures the neighbours).
A fresh engine is used for the re-check when --cold is given (no prefix cache from
generation), which is the verifier's usual case.

    PYTHONPATH=$PWD HF_HUB_OFFLINE=1 python scripts/bench_recheck.py --requests 8 --max-tokens 64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from engine.core import EngineCore  # noqa: E402
from engine.model_files import default_llm_dir  # noqa: E402
from engine.types import GenerationRequest, RecheckRequest, SamplingParams  # noqa: E402

QUESTIONS = [
    "Explain how a bicycle stays upright.",
    "Write a short story about a lighthouse keeper.",
    "What are the main causes of inflation?",
    "Describe the water cycle.",
    "Give three tips for a job interview.",
    "Why do cats purr?",
    "How does a refrigerator work?",
    "Summarize the history of the printing press.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cold", action="store_true", help="re-check on a fresh engine (no shared prefix cache)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    d = default_llm_dir()
    opts = dict(kv_cache_bytes=128 << 20, max_batch_size=16, max_num_batched_tokens=512)
    eng = EngineCore(d, **opts)
    reqs = [
        GenerationRequest(
            f"b{i}",
            SamplingParams(temperature=args.temperature, seed=i, max_tokens=args.max_tokens, ignore_eos=True),
            messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
        )
        for i in range(args.requests)
    ]
    eng.generate(reqs[:1])  # warm-up (allocations, oneDNN packing)
    t0, c0 = time.perf_counter(), time.process_time()
    res = eng.generate(reqs)
    gen_s, gen_cpu = time.perf_counter() - t0, time.process_time() - c0
    if args.cold:
        eng.stop()
        eng = EngineCore(d, **opts)
    rcs = [
        RecheckRequest(f"r{q.request_id}", q.sampling, messages=q.messages, output_token_ids=r.token_ids)
        for q, r in zip(reqs, res, strict=False)
    ]
    eng.recheck(
        [
            RecheckRequest(
                "warm", reqs[0].sampling, messages=reqs[0].messages, output_token_ids=res[0].token_ids[:4]
            )
        ]
    )
    t0, c0 = time.perf_counter(), time.process_time()
    out = eng.recheck(rcs)
    rc_s, rc_cpu = time.perf_counter() - t0, time.process_time() - c0
    eng.stop()
    tokens = sum(len(r.token_ids) for r in res)
    print(
        json.dumps(
            {
                "model": "smollm2-135m-instruct",
                "requests": args.requests,
                "max_tokens": args.max_tokens,
                "temperature": args.temperature,
                "threads": torch.get_num_threads(),
                "cold_verifier": args.cold,
                "generated_tokens": tokens,
                "generate_s": round(gen_s, 3),
                "recheck_s": round(rc_s, 3),
                "generate_tokens_per_s": round(tokens / gen_s, 1),
                "recheck_tokens_per_s": round(tokens / rc_s, 1),
                "recheck_over_generate": round(rc_s / gen_s, 3),
                "generate_cpu_s": round(gen_cpu, 3),
                "recheck_cpu_s": round(rc_cpu, 3),
                "recheck_over_generate_cpu": round(rc_cpu / gen_cpu, 3),
                "all_passed": all(v.passed for v in out),
                "prompt_tokens_from_cache": sum(v.cached_tokens for v in out),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
