"""Other Llama-family layouts: Qwen2 (q/k/v biases), Llama-3 rope scaling, untied
lm_head, multi-query attention. Greedy output must equal HF `generate`."""

from __future__ import annotations

import pytest
import torch

from engine.core import EngineCore, GenerationRequest, SamplingParams
from tests.engine.core.helpers import chat_ids, hf_greedy
from tests.tiny_models import copy_tokenizer, make_tiny_qwen2_dir, randomize_weights, save_model_dir

pytestmark = pytest.mark.timeout(120)


def _check(model_dir, hf):
    eng = EngineCore(model_dir, kv_cache_bytes=8 << 20, block_size=8)
    try:
        msgs = [[{"role": "user", "content": f"Say something about number {i}."}] for i in range(3)]
        reqs = [
            GenerationRequest(f"q{i}", SamplingParams(max_tokens=12, ignore_eos=True), messages=m)
            for i, m in enumerate(msgs)
        ]
        for req, res in zip(reqs, eng.generate(reqs), strict=True):
            assert res.token_ids == hf_greedy(hf, chat_ids(eng.tokenizer, req.messages), 12)
    finally:
        eng.stop()


def test_qwen2_biases(tmp_path):
    from transformers import AutoModelForCausalLM

    model_dir = make_tiny_qwen2_dir(tmp_path / "qwen2")
    m = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    assert m.model.layers[0].self_attn.q_proj.bias is not None
    _check(model_dir, m)


def test_llama3_rope_scaling_untied(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 128,
        },
        rope_theta=500000.0,
        bos_token_id=1,
        eos_token_id=2,
    )
    m = LlamaForCausalLM(cfg)
    randomize_weights(m, 2)
    out = tmp_path / "llama3"
    copy_tokenizer(out)
    _check(save_model_dir(m, cfg, out), m)


def test_unsupported_architecture_is_a_clear_error(tiny_dir, tmp_path):
    from transformers import GPT2Config

    d = tmp_path / "gpt2"
    d.mkdir()
    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(str(d))
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'"):
        EngineCore(d)
    with pytest.raises(FileNotFoundError):
        EngineCore(tmp_path / "missing")
