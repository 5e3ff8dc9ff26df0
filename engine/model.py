"""Llama-family decoder (Llama 2/3, SmolLM2, Mistral without sliding window, Qwen2)
run over the engine's paged KV cache, and `make_runner`, which picks the runner for a
checkpoint's architecture (Gemma 3 lives in engine.gemma3).

Weights come from transformers' own loader (safetensors directory, or a GGUF file
converted once by engine.model_files), so every checkpoint format and rope-scaling
variant transformers understands loads the same way; the forward pass is ours:
a flat batch of tokens from many sequences (prefill chunks and decode tokens mixed),
K/V written into cache slots, attention over each sequence's blocks, and logits only
for the rows that will sample. The arithmetic mirrors Hugging Face's LlamaModel op
for op so greedy outputs match `generate` token for token in fp32.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.linear import make_linear

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")  # LlamaRunner
GEMMA3_MODEL_TYPES = ("gemma3_text", "gemma3")  # Gemma3Runner (engine.gemma3)
RUNNABLE_MODEL_TYPES = SUPPORTED_MODEL_TYPES + GEMMA3_MODEL_TYPES  # what make_runner builds


@dataclass
class AttnBatch:
    """Attention metadata for one step. Token rows [0, num_decode) are decode tokens
    (one per sequence), rows [num_decode, T) are packed prefill chunks."""

    num_decode: int
    decode_block_tables: torch.Tensor | None
    decode_seq_lens: torch.Tensor | None
    prefill_block_tables: torch.Tensor | None
    prefill_seq_lens: torch.Tensor | None
    prefill_cu_seqlens: torch.Tensor | None
    prefill_max_seqlen: int


class _Layer:
    __slots__ = ("w_in", "qkv", "o", "w_post", "gate_up", "down")


def resolve_model_dir(model: str | Path) -> Path:
    """A model directory for `model`: a directory as is, a .gguf file converted once."""
    p = Path(model)
    if p.is_file() and p.suffix == ".gguf":
        from engine.model_files import ensure_converted

        return ensure_converted(p)
    if not p.is_dir():
        raise FileNotFoundError(f"model path is neither a directory nor a .gguf file: {p}")
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in model directory {p}")
    return p


def make_runner(
    model_dir: str | Path, *, device: str = "cpu", dtype: torch.dtype | None = None, quant: str | None = None
):
    """The runner for this checkpoint's architecture: Gemma 3 text models get
    engine.gemma3.Gemma3Runner, Llama-family ones LlamaRunner (same forward contract).
    ``quant`` (int8 | q4; RAKIS_QUANT when None) is supported by LlamaRunner only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig

    model_dir = resolve_model_dir(model_dir)
    model_type = AutoConfig.from_pretrained(str(model_dir)).model_type
    if model_type in GEMMA3_MODEL_TYPES:
        from engine.gemma3 import Gemma3Runner  # imports this module: import lazily

        if quant not in (None, "none"):
            raise ValueError(f"quantized weights ({quant}) are not supported for Gemma 3 yet")
        return Gemma3Runner(model_dir, device=device, dtype=dtype)
    return LlamaRunner(model_dir, device=device, dtype=dtype, quant=quant)


class LlamaRunner:
    """Holds the weights and runs one forward step over a flat token batch."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        quant: str | None = None,
    ) -> None:
        """`quant`: "int8" or "q4" keeps the projections quantized (engine.quant, CPU
        only; compute stays fp32); None reads RAKIS_QUANT, "none" keeps `dtype` weights."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoConfig, AutoModelForCausalLM

        source_path = model_dir
        model_dir = resolve_model_dir(model_dir)
        config = AutoConfig.from_pretrained(str(model_dir))
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {config.model_type!r}; supported: "
                f"{', '.join(SUPPORTED_MODEL_TYPES)} (and gemma3_text through make_runner)"
            )
        if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
            if config.model_type == "mistral":
                raise ValueError("sliding-window attention is not supported")
        if dtype is None:
            dtype = torch.float32 if device == "cpu" else torch.bfloat16
        hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
        hf.eval()
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype
        self.num_layers = config.num_hidden_layers
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.hidden_size = config.hidden_size
        self.vocab_size = config.vocab_size
        self.eps = config.rms_norm_eps
        self.max_position = config.max_position_embeddings
        self.scale = self.head_dim**-0.5
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim

        dev = self.device
        from engine import quant as q

        self.quant = q.resolve_weight_mode(quant)
        if self.quant is not None and (self.device.type != "cpu" or dtype != torch.float32):
            raise ValueError(f"quantized weights ({self.quant}) run on CPU with float32 compute only")
        gguf_blocks: dict = {}
        if self.quant == "q4":
            src = q.gguf_source(source_path) or q.gguf_source(model_dir)
            if src is not None:
                gguf_blocks = q.gguf_quant_weights(src, self.num_heads, self.num_kv_heads)

        def t(x: torch.Tensor) -> torch.Tensor:
            # Always a fresh copy: transformers may load every parameter into one shared
            # buffer (or a mapping of the file), and a single surviving view (say, the
            # embedding) would keep all of it resident after the HF model is dropped.
            return x.detach().to(device=dev, dtype=dtype, copy=True).contiguous()

        def proj(
            names: list[str], weight: torch.Tensor, bias: torch.Tensor | None = None, head: bool = False
        ):
            if self.quant is None:
                return make_linear(t(weight), bias)
            return q.quantized_projection(
                self.quant, [gguf_blocks.get(n) for n in names], weight, bias, head=head
            )

        base = hf.model
        self.embed = t(base.embed_tokens.weight)
        self.layers: list[_Layer] = []
        for hl in base.layers:
            a, m = hl.self_attn, hl.mlp
            if getattr(a, "q_norm", None) is not None:
                raise ValueError("q/k-norm attention (Qwen3-style) is not supported")
            L = _Layer()
            L.w_in = t(hl.input_layernorm.weight)
            biases = [a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]
            blk = f"blk.{len(self.layers)}"
            L.qkv = proj(
                [f"{blk}.attn_q", f"{blk}.attn_k", f"{blk}.attn_v"],
                torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], 0),
                t(torch.cat(biases, 0)) if all(b is not None for b in biases) else None,
            )
            if a.o_proj.bias is not None or getattr(m.down_proj, "bias", None) is not None:
                raise ValueError("output/MLP biases are not supported")
            L.o = proj([f"{blk}.attn_output"], a.o_proj.weight)
            L.w_post = t(hl.post_attention_layernorm.weight)
            L.gate_up = proj(
                [f"{blk}.ffn_gate", f"{blk}.ffn_up"], torch.cat([m.gate_proj.weight, m.up_proj.weight], 0)
            )
            L.down = proj([f"{blk}.ffn_down"], m.down_proj.weight)
            self.layers.append(L)
            # The fused (and, on CPU, packed) copies replace these; release them now so
            # loading peaks at about one model's size rather than two.
            for lin in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj):
                lin.weight.data = torch.empty(0, dtype=lin.weight.dtype)
        self.norm = t(base.norm.weight)
        head = hf.lm_head.weight
        tied = (
            head is base.embed_tokens.weight
            or head.is_meta
            or (getattr(config, "tie_word_embeddings", False) and torch.equal(head, base.embed_tokens.weight))
        )
        head_w = self.embed if tied else t(head)
        self.lm_head = proj(["output"], head_w, head=True)
        # Without oneDNN the CPU vocab projection runs in row slices that stay
        # cache-resident: 10-25% faster for small batches under MKL, bit-identical.
        self.lm_head_chunks: tuple[torch.Tensor, ...] = ()
        if self.device.type == "cpu" and not self.lm_head.packed:
            self.lm_head_chunks = head_w.split(2048)
        rot = base.rotary_emb
        from engine.kernels.reference import rotary_cos_sin

        cos, sin = rotary_cos_sin(rot.inv_freq.float().cpu(), self.max_position, float(rot.attention_scaling))
        self.cos = cos.to(dev)
        self.sin = sin.to(dev)
        self.intermediate = self.layers[0].down.in_features
        from engine.fused_decode import FusedDecode

        # Decode-only steps of a quantized model run as one native call (None: op by op).
        self.fused_decode = FusedDecode.build(self)
        # Drop the HF module tree now (it holds the unfused q/k/v and gate/up copies);
        # transformers models keep reference cycles, so collect explicitly.
        del hf, base, rot, hl, a, m
        gc.collect()

    def bytes_per_token_kv(self) -> int:
        elem = torch.empty((), dtype=self.dtype).element_size()
        return self.num_layers * 2 * self.kv_size * elem

    @torch.inference_mode()
    def forward(
        self,
        ops,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        slot_mapping: torch.Tensor,
        attn: AttnBatch,
        sample_rows: torch.Tensor,
        k_cache: list[torch.Tensor],
        v_cache: list[torch.Tensor],
    ) -> torch.Tensor:
        """Run all layers over T tokens; return logits `[len(sample_rows), V]` in fp32."""
        T = input_ids.shape[0]
        nd = attn.num_decode
        hq, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        qs, kvs = self.q_size, self.kv_size
        inter = self.intermediate
        contiguous_qkv = getattr(ops, "backend", "") != "engine-cpu"
        h = F.embedding(input_ids, self.embed)
        residual = None
        fused = None
        if self.fused_decode is not None and nd == T and getattr(ops, "backend", "") == "engine-cpu":
            fused = self.fused_decode.run(
                h, positions, slot_mapping, attn.decode_block_tables, attn.decode_seq_lens, k_cache, v_cache
            )
        layers = self.layers if fused is None else ()
        if fused is not None:
            h, residual = fused
        for li, L in enumerate(layers):
            x, residual = ops.rms_norm(h, L.w_in, self.eps, residual)
            qkv = L.qkv(x)
            q = qkv[:, :qs].reshape(T, hq, d)
            k = qkv[:, qs : qs + kvs].reshape(T, hkv, d)
            v = qkv[:, qs + kvs :].reshape(T, hkv, d)
            if contiguous_qkv:  # device kernels may assume dense [T, H, D] rows
                q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
            ops.apply_rotary(q, k, positions, self.cos, self.sin)
            kc, vc = k_cache[li], v_cache[li]
            ops.store_kv(k, v, kc, vc, slot_mapping)
            if nd == T:
                o = ops.paged_attention_decode(
                    q, kc, vc, attn.decode_block_tables, attn.decode_seq_lens, self.scale
                )
            elif nd == 0:
                o = ops.paged_attention_prefill(
                    q,
                    kc,
                    vc,
                    attn.prefill_block_tables,
                    attn.prefill_seq_lens,
                    attn.prefill_cu_seqlens,
                    attn.prefill_max_seqlen,
                    self.scale,
                )
            else:
                od = ops.paged_attention_decode(
                    q[:nd], kc, vc, attn.decode_block_tables, attn.decode_seq_lens, self.scale
                )
                op = ops.paged_attention_prefill(
                    q[nd:],
                    kc,
                    vc,
                    attn.prefill_block_tables,
                    attn.prefill_seq_lens,
                    attn.prefill_cu_seqlens,
                    attn.prefill_max_seqlen,
                    self.scale,
                )
                o = torch.cat([od, op], 0)
            h = L.o(o.reshape(T, qs))
            x, residual = ops.rms_norm(h, L.w_post, self.eps, residual)
            gu = L.gate_up(x)
            h = L.down(F.silu(gu[:, :inter]) * gu[:, inter:])
        h = h.index_select(0, sample_rows)
        residual = residual.index_select(0, sample_rows)
        x, _ = ops.rms_norm(h, self.norm, self.eps, residual)
        if self.lm_head_chunks:
            return torch.cat([F.linear(x, w) for w in self.lm_head_chunks], 1).float()
        return self.lm_head(x).float()
