"""Reference helpers: Hugging Face greedy generation and chat prompt rendering."""

from __future__ import annotations

import torch


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids


def hf_greedy(model, ids: list[int], max_new_tokens: int, eos_token_ids=None) -> list[int]:
    """HF `generate` greedy continuation of one unpadded prompt.

    attention_mask is passed explicitly: without it HF masks every prompt token equal
    to pad_token_id (SmolLM2's <|im_end|>) when eos is disabled.
    """
    x = torch.tensor([ids])
    with torch.inference_mode():
        out = model.generate(
            x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=list(eos_token_ids) if eos_token_ids else None,
            pad_token_id=0,
        )
    return out[0, len(ids) :].tolist()


SYSTEM = (
    "You are a careful assistant for a decentralized inference network. Answer briefly, "
    "cite nothing, never invent facts, and keep every answer under fifty words."
)

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain photosynthesis in one sentence.",
    "List three prime numbers.",
    "Who wrote Hamlet?",
    "How do I boil an egg?",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 12?",
]
