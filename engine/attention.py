"""CPU attention over the paged KV cache, and the op set the model runner uses.

The kernels package defines the op contract (docs/CONTRACTS.md) with plain-torch
references written for clarity; here are CPU versions of the cache ops written for
speed on few cores: one gather of each sequence's blocks and one fused
`scaled_dot_product_attention` call per batch (GQA native, no repeat of K/V), instead
of per-head einsums. Decode attention, the part that runs every step for every
sequence, goes to the native kernel (engine.native) when it can be built here: it reads
the blocks in place, 2-8x faster than gather + SDPA; the torch version stays as its
fallback and its oracle. Norm, rotary and sampling come from the references, which
already match Hugging Face Llama numerics. On CUDA the kernels package's Triton set
is used (`engine_ops`).

Both attention functions (and the native decode) take an optional ``window``: a
sliding-window layer (Gemma 3's local layers) lets a query at position p see only keys
in (p - window, p], exactly as Hugging Face's sliding-window mask. The Triton set has
no window, so a model with windows calls these functions directly for its local layers
once a context is longer than the window (engine.gemma3).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write k, v `[T, Hkv, D]` into their cache slots (`slot_mapping` int64 `[T]`), in place."""
    _, _, hkv, d = k_cache.shape
    k_cache.view(-1, hkv, d).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
    v_cache.view(-1, hkv, d).index_copy_(0, slot_mapping, v.to(v_cache.dtype))


@dataclass(frozen=True)
class _Gather:
    """The torch path's per-step data: whole-block gather indices and the length mask."""

    idx: torch.Tensor
    nb: int
    mask: torch.Tensor | None


@dataclass(frozen=True)
class _NativeArgs:
    """The native kernel's per-step data: int32 contiguous tables and lengths, and
    whether they are safe to hand over (lengths within the table, block ids >= 0;
    ``max_block`` is compared with each layer's cache size)."""

    tables: torch.Tensor
    lens: torch.Tensor
    ok: bool
    max_block: int


class _DecodeMeta(threading.local):
    """Per-step data of one decode batch, reused by every layer.

    The model calls attention once per layer with the same block_tables/seq_lens
    tensors; building indices and masks once per step instead of once per layer
    keeps the per-layer overhead to the attention itself. Each path builds only its
    own part, on first use in the step. It holds the tensors it was built from (so
    their identity cannot be recycled) and is per thread (one engine worker per thread).
    """

    bt: torch.Tensor | None = None
    sl: torch.Tensor | None = None
    lens: list[int]
    max_len: int
    gather: _Gather | None = None
    native: _NativeArgs | None = None
    window_masks: dict[int, torch.Tensor] | None = None


_meta = _DecodeMeta()


def _decode_meta(block_tables: torch.Tensor, seq_lens: torch.Tensor) -> _DecodeMeta:
    m = _meta
    if m.bt is block_tables and m.sl is seq_lens:
        return m
    m.lens = seq_lens.tolist()
    m.max_len = max(m.lens) if m.lens else 0
    m.gather = m.native = None
    m.window_masks = None
    m.bt, m.sl = block_tables, seq_lens
    return m


def _gather_of(m: _DecodeMeta, block_size: int) -> _Gather:
    if m.gather is None:
        bt, max_len = m.bt, m.max_len
        assert bt is not None and m.sl is not None
        nb = max(1, math.ceil(max_len / block_size))
        mask = None
        if min(m.lens, default=0) != max_len:
            pos = torch.arange(max_len, device=bt.device)
            mask = (pos[None, :] < m.sl[:, None].to(pos.device))[:, None, None, :]
        # Gather whole blocks (one contiguous block_size*Hkv*D run each) rather than
        # single token rows: ~2-3x faster on CPU; the pad past max_len is sliced off.
        m.gather = _Gather(idx=bt[:, :nb].reshape(-1).long(), nb=nb, mask=mask)
    return m.gather


def _window_mask_of(m: _DecodeMeta, window: int, device: torch.device) -> torch.Tensor:
    """`[B, 1, 1, max_len]` mask of the keys a decode query sees in a `window` layer:
    positions in [len - window, len). Built once per step per window size."""
    if m.window_masks is None:
        m.window_masks = {}
    mask = m.window_masks.get(window)
    if mask is None:
        assert m.sl is not None
        pos = torch.arange(m.max_len, device=device)[None, :]
        lens = m.sl.to(device=device, dtype=torch.long)[:, None]
        mask = ((pos < lens) & (pos >= lens - window))[:, None, None, :]
        m.window_masks[window] = mask
    return mask


def _native_of(m: _DecodeMeta, block_size: int) -> _NativeArgs:
    if m.native is None:
        bt = m.bt
        assert bt is not None and m.sl is not None
        ok = bool(m.lens) and min(m.lens) >= 1 and m.max_len <= bt.shape[1] * block_size
        max_block = 0
        if bt.numel():
            max_block = int(bt.max())
            ok = ok and int(bt.min()) >= 0
        m.native = _NativeArgs(
            tables=bt.to(torch.int32).contiguous(),
            lens=m.sl.to(torch.int32).contiguous(),
            ok=ok,
            max_block=max_block,
        )
    return m.native


def native_decode_args(block_tables: torch.Tensor, seq_lens: torch.Tensor, block_size: int) -> _NativeArgs:
    """The native kernels' int32 tables and lengths for this step's decode batch, with
    whether they are safe to hand over; built once per step (every layer shares them)."""
    return _native_of(_decode_meta(block_tables, seq_lens), block_size)


def _native_decode(lib):
    """paged_attention_decode on the native kernel, falling back to the torch path for
    anything the kernel does not take (non-fp32, unusual layouts)."""
    fn = lib.rakis_paged_decode_f32
    fn_window = getattr(lib, "rakis_paged_decode_window_f32", None)

    def paged_attention_decode_native(
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_tables: torch.Tensor,
        seq_lens: torch.Tensor,
        scale: float,
        window: int | None = None,
    ) -> torch.Tensor:
        b, hq, d = q.shape
        nblocks, bs, hkv, _ = k_cache.shape
        if b == 0:
            return torch.empty_like(q)
        m = _decode_meta(block_tables, seq_lens)
        n = _native_of(m, bs)
        windowed = bool(window) and m.max_len > window
        if not (
            n.ok
            and (fn_window is not None or not windowed)
            and n.max_block < nblocks
            and q.dtype == k_cache.dtype == v_cache.dtype == torch.float32
            and q.device.type == "cpu"
            and q.stride(2) == 1
            and q.stride(1) == d
            and k_cache.is_contiguous()
            and v_cache.is_contiguous()
            and v_cache.shape == k_cache.shape
            and hq % hkv == 0
        ):
            return paged_attention_decode(q, k_cache, v_cache, block_tables, seq_lens, scale, window)
        out = torch.empty((b, hq, d), dtype=q.dtype)
        extra = (int(window),) if windowed else ()
        (fn_window if windowed else fn)(
            q.data_ptr(),
            k_cache.data_ptr(),
            v_cache.data_ptr(),
            n.tables.data_ptr(),
            n.lens.data_ptr(),
            out.data_ptr(),
            b,
            hq,
            hkv,
            d,
            bs,
            n.tables.shape[1],
            float(scale),
            torch.get_num_threads(),
            q.stride(0),
            *extra,
        )
        return out

    return paged_attention_decode_native


def paged_attention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    window: int | None = None,
) -> torch.Tensor:
    """One query token per sequence over its cached context (own K/V already stored).

    q `[B, Hq, D]` -> `[B, Hq, D]`. Every seq_len must be >= 1. With `window`, each
    query sees only its last `window` context positions (sliding-window layers).
    """
    b, hq, d = q.shape
    _, bs, hkv, _ = k_cache.shape
    if b == 0:
        return torch.empty_like(q)
    m = _decode_meta(block_tables, seq_lens)
    gm = _gather_of(m, bs)
    k = k_cache.index_select(0, gm.idx).view(b, gm.nb * bs, hkv, d)[:, : m.max_len].transpose(1, 2)
    v = v_cache.index_select(0, gm.idx).view(b, gm.nb * bs, hkv, d)[:, : m.max_len].transpose(1, 2)
    # The query heads sharing one KV head go in as that head's queries ([B, Hkv, g, D]):
    # one pass over each K/V row instead of g, and the CPU flash kernel gets g query rows
    # to work on instead of 1 (about 2x faster at batch 32 with 2 threads).
    g = hq // hkv
    mask = gm.mask
    if window and m.max_len > window:
        mask = _window_mask_of(m, window, q.device)
    out = F.scaled_dot_product_attention(q.reshape(b, hkv, g, d), k, v, attn_mask=mask, scale=scale)
    return out.reshape(b, hq, d)


def paged_attention_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    max_seqlen_q: int,
    scale: float,
    window: int | None = None,
) -> torch.Tensor:
    """Causal attention of packed chunks `[T, Hq, D]` over their cached context.

    Sequence i owns rows cu_seqlens_q[i]:cu_seqlens_q[i+1]; seq_lens[i] counts its
    context including the chunk (already stored). Query j of a chunk of length n sits
    at position seq_lens[i] - n + j. With `window`, a query at position p sees keys
    in (p - window, p] only.
    """
    t, hq, d = q.shape
    _, bs, hkv, _ = k_cache.shape
    cu = cu_seqlens_q.tolist()
    lens = seq_lens.tolist()
    outs = []
    for i, ctx in enumerate(lens):
        n = cu[i + 1] - cu[i]
        if n == 0:
            continue
        nb = math.ceil(ctx / bs)
        idx = block_tables[i, :nb].long()
        k = (
            k_cache.index_select(0, idx).view(nb * bs, hkv, d)[:ctx].transpose(0, 1).unsqueeze(0)
        )  # [1, Hkv, ctx, D]
        v = v_cache.index_select(0, idx).view(nb * bs, hkv, d)[:ctx].transpose(0, 1).unsqueeze(0)
        qi = q[cu[i] : cu[i + 1]].transpose(0, 1).unsqueeze(0)  # [1, Hq, n, D]
        if window and ctx > window:
            qpos = torch.arange(ctx - n, ctx, device=q.device)[:, None]
            kpos = torch.arange(ctx, device=q.device)[None, :]
            mask = (kpos <= qpos) & (kpos > qpos - window)
            o = F.scaled_dot_product_attention(qi, k, v, attn_mask=mask, scale=scale, enable_gqa=hkv != hq)
        elif n == ctx:
            o = F.scaled_dot_product_attention(qi, k, v, is_causal=True, scale=scale, enable_gqa=hkv != hq)
        else:
            qpos = torch.arange(ctx - n, ctx, device=q.device)
            mask = torch.arange(ctx, device=q.device)[None, :] <= qpos[:, None]
            o = F.scaled_dot_product_attention(qi, k, v, attn_mask=mask, scale=scale, enable_gqa=hkv != hq)
        outs.append(o[0].transpose(0, 1))
    if not outs:
        return torch.empty_like(q)
    return torch.cat(outs, 0) if len(outs) > 1 else outs[0]


class _RotaryMeta(threading.local):
    pos: torch.Tensor | None = None
    cos_cache: torch.Tensor | None = None
    cos: torch.Tensor
    sin: torch.Tensor


_rot = _RotaryMeta()


def apply_rotary(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
) -> None:
    """Llama rotate-half rotary embedding of q `[T, Hq, D]` and k `[T, Hkv, D]`, in place.

    Same arithmetic as the reference (x1*cos - x2*sin, x2*cos + x1*sin, fp32 models),
    with fewer ops: the cos/sin rows are looked up once per step (every layer passes
    the same positions tensor), and when k directly follows q in memory (both views of
    one fused qkv projection) both are rotated as one tensor.
    """
    m = _rot
    if m.pos is not positions or m.cos_cache is not cos_cache:
        m.cos = cos_cache.index_select(0, positions)[:, None, :].to(q.dtype)
        m.sin = sin_cache.index_select(0, positions)[:, None, :].to(q.dtype)
        m.pos, m.cos_cache = positions, cos_cache
    t, hq, d = q.shape
    hkv = k.shape[1]
    if (
        q.stride() == k.stride()
        and q.stride(2) == 1
        and q.stride(1) == d
        and k.data_ptr() == q.data_ptr() + hq * d * q.element_size()
    ):
        parts = (q.as_strided((t, hq + hkv, d), q.stride()),)
    else:
        parts = (q, k)
    half = d // 2
    cos, sin = m.cos, m.sin
    for x in parts:
        x1, x2 = x[..., :half], x[..., half:]
        a = x1 * cos
        a.sub_(x2 * sin)
        b = x2 * cos
        b.add_(x1 * sin)
        x1.copy_(a)
        x2.copy_(b)


def cpu_ops(native: bool = True):
    """The engine's CPU op set (a `kernels.Ops`); decode attention on the native kernel
    when it can be built here (engine.native), else on gather + SDPA."""
    from engine import native as native_kernels
    from engine.kernels import Ops, reference

    lib = native_kernels.load() if native else None
    return Ops(
        backend="engine-cpu",
        store_kv=store_kv,
        paged_attention_decode=_native_decode(lib) if lib is not None else paged_attention_decode,
        paged_attention_prefill=paged_attention_prefill,
        rms_norm=reference.rms_norm,
        apply_rotary=apply_rotary,
        sample=reference.sample,
    )


def engine_ops(device: str | torch.device):
    """Ops for `device`: the kernels package's Triton set on CUDA when it has one, else ours."""
    dev = torch.device(device)
    if dev.type == "cuda":
        try:
            from engine.kernels import get_ops

            ops = get_ops(dev)
            if ops.backend != "reference":
                return ops
        except Exception:  # kernels missing or broken: the CPU-style ops also run on CUDA
            pass
    return cpu_ops()
