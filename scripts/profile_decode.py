"""Where a batch-1 decode step's time goes (torch profiler), per weight mode.

Generates --tokens tokens for one request on an EngineCore and prints the profiler's
top operators by self CPU time (the native quant GEMM shows up as the Python-side
`QuantLinear` record function), plus the step time.

    PYTHONPATH=$PWD .venv/bin/python scripts/profile_decode.py --quant q4 --threads 2
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quant", default="q4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rows", type=int, default=25)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.environ["RAKIS_QUANT"] = a.quant
    from engine import quant
    from engine.core import EngineCore, GenerationRequest, SamplingParams
    from engine.model_files import default_llm_dir

    # Label the native GEMM calls so the profile separates them from torch's ops.
    call = quant.QuantLinear.__call__

    def labelled(self, x):
        with torch.profiler.record_function(f"quant_gemm[{self.out_features}x{self.in_features}]"):
            return call(self, x)

    quant.QuantLinear.__call__ = labelled
    from engine import fused_decode

    run = fused_decode.FusedDecode.run

    def labelled_run(self, *args):
        with torch.profiler.record_function("fused_decode_layers"):
            return run(self, *args)

    fused_decode.FusedDecode.run = labelled_run
    eng = EngineCore(default_llm_dir(), kv_cache_bytes=64 << 20, num_threads=a.threads)

    def gen():
        # Steps driven from this thread (no worker), so the profiler sees every op.
        s = eng.submit(
            GenerationRequest(
                f"p{time.time_ns()}",
                SamplingParams(max_tokens=a.tokens, ignore_eos=True),
                prompt="Once upon a time",
            )
        )
        for seq in eng._inbox:
            eng.scheduler.add(seq)
        eng._inbox = []
        eng._step()  # prefill
        t0 = time.perf_counter()
        while eng.scheduler.has_work():
            eng._step()
        s.result()
        return (time.perf_counter() - t0) / (a.tokens - 1)

    gen()
    plain = gen()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        profiled = gen()
    print(
        f"mode {a.quant}, threads {a.threads}: {1e3 * plain:.1f} ms/token ({1 / plain:.1f} tok/s), "
        f"{1e3 * profiled:.1f} ms/token under the profiler"
    )
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows))


if __name__ == "__main__":
    main()
