"""Build a tiny random Llama model directory for fast, real tests.

The model is a genuine `LlamaForCausalLM` (so Hugging Face `generate` is the
reference) with a real tokenizer and chat template copied from the converted
SmolLM2 directory, so chat requests render exactly like the default model's.
Weights are drawn with a larger init scale than usual so logits are spread out
and greedy decoding rarely meets near-ties (which would make batch-shape
rounding differences visible).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)


def copy_tokenizer(path: Path) -> None:
    """SmolLM2's tokenizer and chat template into `path` (made if missing)."""
    from engine.model_files import default_llm_dir

    path.mkdir(parents=True, exist_ok=True)
    src = default_llm_dir()
    for name in _TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, path / name)


def randomize_weights(model, seed: int, *, init_std: float = 0.25, norm_center: float = 1.0) -> None:
    """Draw every weight from N(0, init_std), norms from N(norm_center, 0.1), with
    `seed`; eval mode. A large init spreads the logits, so greedy decoding rarely
    meets near-ties (see the module docstring). Gemma norms scale by (1 + w): center 0."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(norm_center + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(init_std * torch.randn(p.shape, generator=gen))
    model.eval()


def save_model_dir(model, config, path: Path) -> Path:
    """`model` as safetensors with its config and generation config, beside the
    tokenizer files already in `path`; returns `path`."""
    from safetensors.torch import save_model

    save_model(model, str(path / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(path))
    model.generation_config.save_pretrained(str(path))
    return path


def make_tiny_llama_dir(
    path: str | Path,
    *,
    seed: int = 0,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
    init_std: float = 0.25,
    tie_word_embeddings: bool = True,
) -> Path:
    """Write a tiny random Llama (vocab 49152, SmolLM2 tokenizer) to `path` and return it.

    Deterministic for a given `seed` and shape. Takes well under a second once the
    default model has been converted (the tokenizer is copied from there).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import LlamaConfig, LlamaForCausalLM

    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError("hidden_size must divide by num_heads and num_heads by num_kv_heads")
    path = Path(path)
    copy_tokenizer(path)

    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        initializer_range=init_std,
    )
    model = LlamaForCausalLM(config)
    randomize_weights(model, seed, init_std=init_std)
    return save_model_dir(model, config, path)


def make_tiny_gemma3_dir(
    path: str | Path,
    *,
    seed: int = 0,
    sliding_window: int = 8,
    layer_types: tuple[str, ...] = (
        "sliding_attention",
        "sliding_attention",
        "full_attention",
        "sliding_attention",
    ),
    final_logit_softcapping: float | None = 30.0,
    rope_scaling_factor: float | None = 4.0,
    init_std: float = 0.25,
) -> Path:
    """Write a tiny random Gemma 3 text model (`Gemma3ForCausalLM`) to `path`.

    Every Gemma 3 feature the engine reproduces is switched on at a size where it shows:
    a sliding window (8) far shorter than a chat prompt, interleaved local and global
    layers, MQA-free GQA (4 query heads over 2 KV heads), head_dim != hidden/heads,
    query_pre_attn_scalar != head_dim, linear rope scaling on the global layers, and
    final logit softcapping. SmolLM2's tokenizer and chat template, as for the tiny Llama.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    path = Path(path)
    copy_tokenizer(path)
    full = {"rope_type": "default", "rope_theta": 1_000_000.0}
    if rope_scaling_factor is not None:
        full = {"rope_type": "linear", "factor": rope_scaling_factor, "rope_theta": 1_000_000.0}
    config = Gemma3TextConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=len(layer_types),
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,
        query_pre_attn_scalar=20,
        max_position_embeddings=1024,
        rms_norm_eps=1e-6,
        sliding_window=sliding_window,
        layer_types=list(layer_types),
        rope_parameters={
            "full_attention": full,
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
        final_logit_softcapping=final_logit_softcapping,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    model = Gemma3ForCausalLM(config)
    randomize_weights(model, seed, init_std=init_std, norm_center=0.0)
    return save_model_dir(model, config, path)


def make_tiny_qwen2_dir(path: str | Path, *, seed: int = 1) -> Path:
    """Write a tiny random Qwen2 (q/k/v biases, one KV head for four query heads,
    untied lm_head) to `path`, with SmolLM2's tokenizer as for the tiny Llama."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    copy_tokenizer(path)
    config = Qwen2Config(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = Qwen2ForCausalLM(config)
    randomize_weights(model, seed)
    return save_model_dir(model, config, path)
