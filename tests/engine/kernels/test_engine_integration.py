"""The Triton ops inside the engine's real model runner (tiny random Llama, interpreter).

Checks what unit tests cannot: the engine's own calls (strided q/k/v views of a fused qkv
projection, packed prefill then decode, per-layer caches) give the same logits with
`kernels.triton_ops` as with the references and as Hugging Face, and the decode step can
be run through `DecodeGraphRunner` on padded static buffers (what a CUDA-graph replay sees).
"""

from __future__ import annotations

import pytest
import torch

import engine.kernels as kernels
from engine.kernels import reference as ref
from engine.kernels.cuda_graphs import DecodeGraphRunner

BLOCK, NUM_BLOCKS = 4, 16


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_theta=10000.0,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    return path, model.eval()


def _runner(path):
    engine_model = pytest.importorskip("engine.model")
    if not hasattr(engine_model, "LlamaRunner") or not hasattr(engine_model, "AttnBatch"):
        pytest.skip("engine.model has no LlamaRunner/AttnBatch")
    fields = set(getattr(engine_model.AttnBatch, "__dataclass_fields__", {}))
    if fields != _ATTN_FIELDS:  # the engine changed its runner API: this test needs updating
        pytest.skip(f"engine AttnBatch fields changed: {sorted(fields ^ _ATTN_FIELDS)}")
    return engine_model, engine_model.LlamaRunner(path, device="cpu", dtype=torch.float32)


def _generate_two_steps(engine_model, runner, ops, prompts):
    """Prefill both prompts in one packed step, then one decode step; return both logits."""
    hkv, d = runner.num_kv_heads, runner.head_dim
    kc = [torch.zeros(NUM_BLOCKS, BLOCK, hkv, d) for _ in range(runner.num_layers)]
    vc = [torch.zeros_like(c) for c in kc]
    tables = torch.tensor([[1, 2, 3, 0], [5, 7, 9, 11]], dtype=torch.int32)

    def slot(seq, pos):
        return int(tables[seq, pos // BLOCK]) * BLOCK + pos % BLOCK

    ids = torch.tensor([t for p in prompts for t in p])
    positions = torch.tensor([i for p in prompts for i in range(len(p))])
    slots = torch.tensor([slot(s, i) for s, p in enumerate(prompts) for i in range(len(p))])
    lens = [len(p) for p in prompts]
    cu = torch.tensor([0, lens[0], sum(lens)], dtype=torch.int32)
    attn = engine_model.AttnBatch(
        num_decode=0,
        decode_block_tables=None,
        decode_seq_lens=None,
        prefill_block_tables=tables,
        prefill_seq_lens=torch.tensor(lens, dtype=torch.int32),
        prefill_cu_seqlens=cu,
        prefill_max_seqlen=max(lens),
    )
    last_rows = cu[1:].long() - 1
    prefill_logits = runner.forward(ops, ids, positions, slots, attn, last_rows, kc, vc)

    next_ids = prefill_logits.argmax(-1)
    pos = torch.tensor(lens)
    dslots = torch.tensor([slot(s, n) for s, n in enumerate(lens)])
    dlens = torch.tensor(lens, dtype=torch.int32) + 1

    def decode_forward(input_ids, positions, slot_mapping, block_tables, seq_lens):
        a = engine_model.AttnBatch(
            num_decode=input_ids.shape[0],
            decode_block_tables=block_tables,
            decode_seq_lens=seq_lens,
            prefill_block_tables=None,
            prefill_seq_lens=None,
            prefill_cu_seqlens=None,
            prefill_max_seqlen=0,
        )
        rows = torch.arange(input_ids.shape[0])
        return runner.forward(ops, input_ids, positions, slot_mapping, a, rows, kc, vc)

    graph = DecodeGraphRunner(
        decode_forward, max_batch_size=4, max_blocks_per_seq=4, device="cpu", mode="static"
    )
    decode_logits = graph(next_ids, pos, dslots, tables, dlens)  # staged in static buffers (bucket 2)
    return prefill_logits, next_ids, decode_logits


def test_engine_runner_with_triton_ops_matches_reference_and_hf(tops, tiny_llama_dir):
    path, hf = tiny_llama_dir
    engine_model, runner = _runner(path)
    prompts = [[3, 17, 42, 5, 9], [8, 1, 77, 23, 60, 11, 2, 90, 33]]
    triton_ops = kernels.Ops("triton", **{n: getattr(tops, n) for n in _OP_NAMES})
    ref_ops = kernels.Ops("reference", **{n: getattr(ref, n) for n in _OP_NAMES})
    want = _generate_two_steps(engine_model, runner, ref_ops, prompts)
    got = _generate_two_steps(engine_model, runner, triton_ops, prompts)
    torch.testing.assert_close(got[0], want[0], atol=1e-4, rtol=1e-4)
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[2], want[2], atol=1e-4, rtol=1e-4)
    # Oracle: HF full forward over prompt + chosen token, logits of the last two positions.
    with torch.no_grad():
        for i, p in enumerate(prompts):
            full = hf(torch.tensor([p + [int(want[1][i])]])).logits[0]
            torch.testing.assert_close(want[0][i], full[-2], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(want[2][i], full[-1], atol=1e-4, rtol=1e-4)


_ATTN_FIELDS = {
    "num_decode",
    "decode_block_tables",
    "decode_seq_lens",
    "prefill_block_tables",
    "prefill_seq_lens",
    "prefill_cu_seqlens",
    "prefill_max_seqlen",
}
_OP_NAMES = (
    "store_kv",
    "paged_attention_decode",
    "paged_attention_prefill",
    "rms_norm",
    "apply_rotary",
    "sample",
)
