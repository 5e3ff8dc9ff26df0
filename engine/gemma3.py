"""Gemma 3 text decoder (`gemma3_text`, e.g. Gemma 3 270M) over the engine's paged KV cache.

Same contract as engine.model.LlamaRunner (one forward over a flat batch of decode
tokens and prefill chunks, K/V written into cache slots, logits only for sampled rows),
with Gemma 3's differences from Llama, each mirroring Hugging Face's
`modeling_gemma3.py` op for op so fp32 greedy output matches `generate` token for token:

- embeddings multiplied by sqrt(hidden_size) (cast to the weight dtype, as HF does);
- RMSNorm scales by (1 + weight), computed in fp32 before casting back;
- four norms per layer: input, post-attention, pre-feedforward, post-feedforward, with
  the post norms applied to the sublayer output before the residual add;
- QK-norm: RMSNorm over head_dim of q and k before rotary;
- interleaved layer types (`config.layer_types`): "sliding_attention" layers see only
  the last `sliding_window` positions (a query at p sees keys in (p - window, p]),
  "full_attention" layers see everything; each type has its own rotary table
  (local base 10k, global base 1M on 270M) built from HF's own inv_freq buffers, so
  rope scaling variants in the config (e.g. linear on the larger Gemma 3) carry over;
- attention scale query_pre_attn_scalar ** -0.5, not head_dim ** -0.5;
- GeGLU MLP: gelu(tanh approximation)(gate) * up;
- final logit softcapping when the config sets it (tanh(x / c) * c).

Sliding windows and the paged cache: every layer's K/V is stored in full (the cache
layout is shared by all layers; the radix prefix cache stays valid), and a local layer
simply attends to a window of it. While every context in the step fits inside the
window, a local layer is a plain causal layer and runs on the op set's fast kernels
(native C decode on CPU, Triton on CUDA); once any context is longer, the layer runs on
engine.attention's windowed paths: the native decode kernel with its window argument
on CPU fp32, torch SDPA with a band mask otherwise (prefill, bf16, CUDA).

Not supported (rejected at load with a clear error): attention-logit softcapping (Gemma
2 only), bidirectional attention (EmbeddingGemma), dynamic rope, multimodal `gemma3`
checkpoints (only their text decoder is a `gemma3_text` model).
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from engine import attention as engine_attention
from engine.linear import make_linear
from engine.model import AttnBatch, resolve_model_dir

GEMMA3_MODEL_TYPES = ("gemma3_text",)
_LOCAL = "sliding_attention"
_GLOBAL = "full_attention"


def gemma_rms_norm(x: torch.Tensor, weight_plus_one: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma RMSNorm over the last dim: statistics and the (1 + w) multiply in fp32, then
    cast back to x's dtype (HF's Gemma3RMSNorm; Llama instead casts before the multiply).
    `weight_plus_one` is the fp32 `1 + weight`, precomputed (the same fp32 sum HF makes)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (h * weight_plus_one).to(x.dtype)


class _Gemma3Layer:
    __slots__ = (
        "w_in",
        "qkv",
        "qk_norm",
        "o",
        "w_post_attn",
        "w_pre_ff",
        "gate_up",
        "down",
        "w_post_ff",
        "window",
        "rope",
    )


class Gemma3Runner:
    """Holds Gemma 3 weights and runs one forward step over a flat token batch."""

    def __init__(
        self, model_dir: str | Path, *, device: str = "cpu", dtype: torch.dtype | None = None
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoConfig, AutoModelForCausalLM

        model_dir = resolve_model_dir(model_dir)
        config = AutoConfig.from_pretrained(str(model_dir))
        _check_config(config)
        if dtype is None:
            dtype = torch.float32 if device == "cpu" else torch.bfloat16
        hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
        hf.eval()
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype
        self.num_layers = config.num_hidden_layers
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.hidden_size = config.hidden_size
        self.vocab_size = config.vocab_size
        self.eps = config.rms_norm_eps
        self.max_position = config.max_position_embeddings
        self.scale = float(config.query_pre_attn_scalar) ** -0.5
        self.final_softcap = config.final_logit_softcapping
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        layer_types = list(config.layer_types)
        self.sliding_window = int(config.sliding_window) if _LOCAL in layer_types else None

        dev = self.device

        def t(x: torch.Tensor) -> torch.Tensor:
            # A fresh copy (see LlamaRunner): no view may keep HF's buffers alive.
            return x.detach().to(device=dev, dtype=dtype, copy=True).contiguous()

        def norm_w(w: torch.Tensor) -> torch.Tensor:
            return (1.0 + w.detach().float()).to(dev).contiguous()

        base = hf.model
        # HF multiplies by the scale cast to the weight dtype (sqrt(640) rounded to bf16
        # in a bf16 model); the same rounding here keeps bf16 runs comparable.
        self.embed_scale = torch.tensor(config.hidden_size**0.5, dtype=torch.float32).to(dtype).to(dev)
        self.embed = t(base.embed_tokens.weight)
        hq, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        self.layers: list[_Gemma3Layer] = []
        for li, hl in enumerate(base.layers):
            a, m = hl.self_attn, hl.mlp
            L = _Gemma3Layer()
            L.w_in = norm_w(hl.input_layernorm.weight)
            L.qkv = make_linear(t(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], 0)))
            # q and k sit side by side in the qkv output, so both norms run as one op over
            # [T, Hq + Hkv, D] with a per-head weight row (per-row arithmetic: identical).
            L.qk_norm = torch.cat(
                [norm_w(a.q_norm.weight).expand(hq, d), norm_w(a.k_norm.weight).expand(hkv, d)], 0
            ).contiguous()
            L.o = make_linear(t(a.o_proj.weight))
            L.w_post_attn = norm_w(hl.post_attention_layernorm.weight)
            L.w_pre_ff = norm_w(hl.pre_feedforward_layernorm.weight)
            L.gate_up = make_linear(t(torch.cat([m.gate_proj.weight, m.up_proj.weight], 0)))
            L.down = make_linear(t(m.down_proj.weight))
            L.w_post_ff = norm_w(hl.post_feedforward_layernorm.weight)
            L.window = self.sliding_window if layer_types[li] == _LOCAL else None
            L.rope = layer_types[li]
            self.layers.append(L)
            for lin in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj):
                lin.weight.data = torch.empty(0, dtype=lin.weight.dtype)
        self.norm = norm_w(base.norm.weight)
        head = hf.lm_head.weight
        tied = (
            head is base.embed_tokens.weight
            or head.is_meta
            or (getattr(config, "tie_word_embeddings", False) and torch.equal(head, base.embed_tokens.weight))
        )
        head_w = self.embed if tied else t(head)
        self.lm_head = make_linear(head_w)
        self.lm_head_chunks: tuple[torch.Tensor, ...] = ()
        if self.device.type == "cpu" and not self.lm_head.packed:
            self.lm_head_chunks = head_w.split(2048)

        from engine.kernels.reference import rotary_cos_sin

        rot = base.rotary_emb
        self.rope: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for kind in sorted(set(layer_types)):
            inv_freq = getattr(rot, f"{kind}_inv_freq")
            scaling = float(getattr(rot, f"{kind}_attention_scaling"))
            cos, sin = rotary_cos_sin(inv_freq.float().cpu(), self.max_position, scaling)
            self.rope[kind] = (cos.to(dev), sin.to(dev))
        self.intermediate = self.layers[0].down.in_features
        del hf, base, rot, hl, a, m
        gc.collect()

    def bytes_per_token_kv(self) -> int:
        elem = torch.empty((), dtype=self.dtype).element_size()
        return self.num_layers * 2 * self.kv_size * elem

    def _max_context(self, attn: AttnBatch) -> int:
        """Longest context in this step (decides whether local layers need their window)."""
        lens = [x for x in (attn.decode_seq_lens, attn.prefill_seq_lens) if x is not None and x.numel()]
        return max(int(x.max()) for x in lens) if lens else 0

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
        eps = self.eps
        engine_cpu = getattr(ops, "backend", "") == "engine-cpu"
        windowed = self.sliding_window is not None and self._max_context(attn) > self.sliding_window
        h = F.embedding(input_ids, self.embed) * self.embed_scale
        for li, L in enumerate(self.layers):
            x = gemma_rms_norm(h, L.w_in, eps)
            qkv = L.qkv(x)
            qk = gemma_rms_norm(qkv[:, : qs + kvs].reshape(T, hq + hkv, d), L.qk_norm, eps)
            q, k = qk[:, :hq], qk[:, hq:]
            v = qkv[:, qs + kvs :].reshape(T, hkv, d)
            if not engine_cpu:  # device kernels may assume dense [T, H, D] rows
                q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
            cos, sin = self.rope[L.rope]
            ops.apply_rotary(q, k, positions, cos, sin)
            kc, vc = k_cache[li], v_cache[li]
            ops.store_kv(k, v, kc, vc, slot_mapping)
            o = self._attention(ops, q, kc, vc, attn, nd, T, L.window if windowed else None, engine_cpu)
            a = L.o(o.reshape(T, qs))
            h = h + gemma_rms_norm(a, L.w_post_attn, eps)
            x = gemma_rms_norm(h, L.w_pre_ff, eps)
            gu = L.gate_up(x)
            mlp = L.down(F.gelu(gu[:, :inter], approximate="tanh") * gu[:, inter:])
            h = h + gemma_rms_norm(mlp, L.w_post_ff, eps)
        h = h.index_select(0, sample_rows)
        x = gemma_rms_norm(h, self.norm, eps)
        if self.lm_head_chunks:
            logits = torch.cat([F.linear(x, w) for w in self.lm_head_chunks], 1).float()
        else:
            logits = self.lm_head(x).float()
        if self.final_softcap is not None:
            c = float(self.final_softcap)
            logits = torch.tanh(logits / c) * c
        return logits

    def _attention(
        self,
        ops,
        q: torch.Tensor,
        kc: torch.Tensor,
        vc: torch.Tensor,
        attn: AttnBatch,
        nd: int,
        T: int,
        window: int | None,
        engine_cpu: bool,
    ) -> torch.Tensor:
        """Decode rows [0, nd) and prefill rows [nd, T); `window` set only for a local
        layer in a step where some context is longer than the window."""
        if window is None:
            decode, prefill, kw = ops.paged_attention_decode, ops.paged_attention_prefill, {}
        else:
            # The engine's CPU decode (native or torch) takes a window; other op sets
            # (Triton) do not, so they use the torch path, which runs on any device.
            decode = ops.paged_attention_decode if engine_cpu else engine_attention.paged_attention_decode
            prefill, kw = engine_attention.paged_attention_prefill, {"window": window}
        parts = []
        if nd:
            parts.append(
                decode(q[:nd], kc, vc, attn.decode_block_tables, attn.decode_seq_lens, self.scale, **kw)
            )
        if nd < T:
            parts.append(
                prefill(
                    q[nd:],
                    kc,
                    vc,
                    attn.prefill_block_tables,
                    attn.prefill_seq_lens,
                    attn.prefill_cu_seqlens,
                    attn.prefill_max_seqlen,
                    self.scale,
                    **kw,
                )
            )
        return parts[0] if len(parts) == 1 else torch.cat(parts, 0)


def _check_config(config) -> None:
    """Reject Gemma variants whose numerics this runner does not reproduce."""
    if config.model_type == "gemma3":
        raise ValueError("multimodal gemma3 checkpoints are not supported; use a text-only gemma3_text model")
    if config.model_type not in GEMMA3_MODEL_TYPES:
        raise ValueError(f"not a Gemma 3 text model: model_type {config.model_type!r}")
    if getattr(config, "attn_logit_softcapping", None) is not None:
        raise ValueError("attention logit softcapping is not supported")
    if getattr(config, "use_bidirectional_attention", False):
        raise ValueError("bidirectional attention (EmbeddingGemma) is not supported")
    if getattr(config, "attention_bias", False):
        raise ValueError("attention biases are not supported for Gemma 3")
    for kind, params in (getattr(config, "rope_parameters", None) or {}).items():
        if params and params.get("rope_type", "default") == "dynamic":
            raise ValueError(f"dynamic rope ({kind} layers) is not supported")
    unknown = set(config.layer_types) - {_LOCAL, _GLOBAL}
    if unknown:
        raise ValueError(f"unknown Gemma 3 layer types: {sorted(unknown)}")
