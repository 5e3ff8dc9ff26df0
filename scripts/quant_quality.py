"""Quality of the quantized weight modes against fp32 (engine.quant): greedy agreement
on the 20-prompt set of tests/engine/core/test_smollm2.py and perplexity on a fixed text.

For each mode (fp32, int8, q4) an EngineCore generates greedily for the 20 prompts;
a prompt "agrees" when its tokens equal fp32's exactly, and the token agreement is the
share of fp32's tokens reproduced before the first divergence. Perplexity is teacher-forced
over the fixed text below in one prefill chunk (the runner's own forward, all rows).

    PYTHONPATH=$PWD .venv/bin/python scripts/quant_quality.py [--modes none,int8,q4] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import math
import os

import torch

TEXT = (
    "The history of computing is a story of abstraction. Early machines were programmed by "
    "rewiring panels of cables; later, instructions were stored in memory alongside the data they "
    "operated on, an idea usually credited to John von Neumann. Assembly languages gave names to "
    "machine instructions, and compilers translated higher-level languages such as Fortran and C "
    "into those instructions automatically. Operating systems hid the details of disks, memory and "
    "devices behind files and processes. Networks connected machines into larger systems, and the "
    "web turned documents on distant computers into pages anyone could read. Each layer let "
    "programmers think about a problem instead of the machine, at the price of some speed, and each "
    "time the hardware grew fast enough that the price was worth paying. Today large language models "
    "are trained on much of this written record, and they run on the same kinds of processors, "
    "from phones to data centres, that the earlier abstractions made possible."
)


def perplexity(eng) -> float:
    from engine.model import AttnBatch

    ids = eng.tokenizer(TEXT)["input_ids"]
    t = len(ids)
    bs = eng.block_size
    nb = -(-t // bs)
    blocks = eng.allocator.allocate(nb)
    try:
        attn = AttnBatch(
            num_decode=0,
            decode_block_tables=None,
            decode_seq_lens=None,
            prefill_block_tables=torch.tensor([blocks], dtype=torch.int32),
            prefill_seq_lens=torch.tensor([t], dtype=torch.int32),
            prefill_cu_seqlens=torch.tensor([0, t], dtype=torch.int32),
            prefill_max_seqlen=t,
        )
        slots = [blocks[i // bs] * bs + i % bs for i in range(t)]
        logits = eng.runner.forward(
            eng.ops,
            torch.tensor(ids),
            torch.arange(t),
            torch.tensor(slots),
            attn,
            torch.arange(t),
            eng.kv.k,
            eng.kv.v,
        )
    finally:
        for b in blocks:
            eng.allocator.decref(b)
    nll = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="mean")
    return math.exp(nll.item())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modes", default="none,int8,q4")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from engine.core import EngineCore, GenerationRequest, SamplingParams
    from engine.model_files import default_llm_dir
    from tests.engine.core.test_smollm2 import PROMPTS, _messages

    d = default_llm_dir()
    outputs: dict[str, list[list[int]]] = {}
    print(
        "| weights | prompts identical to fp32 | tokens agreeing (before first divergence) | perplexity | change |"
    )
    print("|---|---|---|---|---|")
    base_ppl = None
    for mode in a.modes.split(","):
        os.environ["RAKIS_QUANT"] = mode
        eng = EngineCore(d, kv_cache_bytes=64 << 20, max_batch_size=20, max_num_batched_tokens=512)
        try:
            ppl = perplexity(eng)
            eng.start()
            streams = [
                eng.submit(
                    GenerationRequest(
                        f"q{i}", SamplingParams(max_tokens=a.max_tokens), messages=_messages(i, p)
                    )
                )
                for i, p in enumerate(PROMPTS)
            ]
            outputs[mode] = [s.result(timeout=600).token_ids for s in streams]
        finally:
            eng.stop()
        ref = outputs.get("none", outputs[mode])
        same = sum(o == r for o, r in zip(outputs[mode], ref, strict=True))
        agree = total = 0
        for o, r in zip(outputs[mode], ref, strict=True):
            k = 0
            while k < min(len(o), len(r)) and o[k] == r[k]:
                k += 1
            agree += k
            total += len(r)
        base_ppl = base_ppl or ppl
        name = "fp32" if mode == "none" else mode
        print(
            f"| {name} | {same}/{len(PROMPTS)} | {agree}/{total} ({100 * agree / total:.1f}%) | {ppl:.3f} | "
            f"{100 * (ppl / base_ppl - 1):+.2f}% |",
            flush=True,
        )
    os.environ.pop("RAKIS_QUANT", None)


if __name__ == "__main__":
    main()
