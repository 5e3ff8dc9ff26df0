"""Triton kernels for the CUDA engine; same signatures and semantics as `kernels.reference`.

Design notes (why, not what):
- One attention kernel serves decode and chunked prefill. Each program owns one
  (sequence, kv head) pair and a tile of "rows", where a row is (query token, q head of that
  kv head's group). Packing the GQA group into the M dimension means K/V of a kv head are
  read once for all its q heads, and decode (one token, group of 3 for SmolLM2) still fills
  a tensor-core tile (M padded to 16).
- Decode with few (sequence, kv head) pairs splits the context over several programs and
  merges their softmax states in a second kernel (flash-decoding), so batch 1 is not
  limited to a handful of SMs.
- K/V are addressed per token through the block table (`block = table[pos // block_size]`),
  so any block size works, including ones smaller than the key tile.
- Nothing here reads device values on the host: grids depend only on shapes and the
  caller's `max_seqlen_q`, so decode can be captured in a CUDA graph.
- Sampling stays in torch (`reference.sample`): see docs/benchmarks.md for the reasoning.

Tested on CPU under TRITON_INTERPRET=1 (tests/engine/kernels); GPU timings in docs/benchmarks.md.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from engine.kernels import reference as _ref
from engine.kernels.reference import sample  # noqa: F401  (torch sampling is the CUDA path too)

__all__ = [
    "store_kv",
    "paged_attention_decode",
    "paged_attention_prefill",
    "rms_norm",
    "apply_rotary",
    "sample",
]

_LOG2E = 1.4426950408889634
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _pow2(n: int, floor: int = 1) -> int:
    return max(floor, triton.next_power_of_2(max(1, n)))


def _last_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


# --------------------------------------------------------------------------- store_kv


@triton.jit
def _store_kv_kernel(
    K,
    V,
    KC,
    VC,
    SLOTS,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_kcb,
    stride_kcs,
    stride_kch,
    stride_vcb,
    stride_vcs,
    stride_vch,
    block_size,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0)
    slot = tl.load(SLOTS + t)
    if slot < 0:  # padding token (CUDA-graph batch filler)
        return
    blk = slot // block_size
    off = slot % block_size
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    mask = (h[:, None] < NUM_HEADS) & (d[None, :] < HEAD_DIM)
    k = tl.load(K + t * stride_kt + h[:, None] * stride_kh + d[None, :], mask=mask)
    v = tl.load(V + t * stride_vt + h[:, None] * stride_vh + d[None, :], mask=mask)
    kc = KC + blk * stride_kcb + off * stride_kcs + h[:, None] * stride_kch + d[None, :]
    vc = VC + blk * stride_vcb + off * stride_vcs + h[:, None] * stride_vch + d[None, :]
    tl.store(kc, k.to(KC.dtype.element_ty), mask=mask)
    tl.store(vc, v.to(VC.dtype.element_ty), mask=mask)


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """See reference.store_kv. Negative slots are skipped."""
    _, bs, hkv, d = _ref._check_cache(k_cache, v_cache)
    if k.dim() != 3 or k.shape != v.shape or k.shape[1:] != (hkv, d):
        raise ValueError(f"k and v must be [T, {hkv}, {d}], got {tuple(k.shape)} and {tuple(v.shape)}")
    if slot_mapping.dim() != 1 or slot_mapping.shape[0] != k.shape[0]:
        raise ValueError(f"slot_mapping must be [T={k.shape[0]}], got {tuple(slot_mapping.shape)}")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("k_cache and v_cache must be contiguous in head_dim")
    t = k.shape[0]
    if t == 0:
        return
    k, v = _last_contiguous(k), _last_contiguous(v)
    _store_kv_kernel[(t,)](
        k,
        v,
        k_cache,
        v_cache,
        slot_mapping,
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        bs,
        NUM_HEADS=hkv,
        HEAD_DIM=d,
        BLOCK_H=_pow2(hkv),
        BLOCK_D=_pow2(d),
    )


# --------------------------------------------------------------------------- attention


@triton.jit
def _paged_attention_kernel(
    Q,
    K,
    V,
    OUT,
    BT,
    SL,
    CU,
    M_PART,
    L_PART,
    ACC_PART,
    scale_log2,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_bt,
    block_size,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    IS_DECODE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    SPLIT: tl.constexpr,
    PARTITION: tl.constexpr,
):
    if SPLIT:  # decode only: axis 0 indexes context partitions, rows fit one tile
        split = tl.program_id(0)
        pid_m = 0
    else:
        pid_m = tl.program_id(0)
    b = tl.program_id(1)
    kvh = tl.program_id(2)

    ctx = tl.load(SL + b)
    if IS_DECODE:
        q_start = b
        q_len = 1
    else:
        q_start = tl.load(CU + b)
        q_len = tl.load(CU + b + 1) - q_start
    if pid_m * BLOCK_M >= q_len * GROUP:  # tile past this sequence's chunk
        return

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    tok = rows // GROUP
    head = kvh * GROUP + rows % GROUP
    row_ok = tok < q_len
    q_pos = ctx - q_len + tok  # absolute position of each row's query token
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM

    q_ptrs = Q + (q_start + tok)[:, None].to(tl.int64) * stride_qt + head[:, None] * stride_qh + d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST_DOT:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    last_tok = tl.minimum(q_len - 1, ((pid_m + 1) * BLOCK_M - 1) // GROUP)
    kv_end = ctx - q_len + last_tok + 1  # causal: nothing past the tile's last query
    kv_lo = 0
    if SPLIT:
        kv_lo = split * PARTITION
        kv_end = tl.minimum(kv_end, kv_lo + PARTITION)
    bt_row = BT + b.to(tl.int64) * stride_bt
    for start in range(kv_lo, kv_end, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_ok = n < kv_end
        blk = tl.load(bt_row + n // block_size, mask=n_ok, other=0).to(tl.int64)
        off = n % block_size
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(
            K + blk[:, None] * stride_kb + off[:, None] * stride_ks + kvh * stride_kh + d[None, :],
            mask=kv_mask,
            other=0.0,
        )
        if UPCAST_DOT:
            k = k.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
        s = tl.where(n_ok[None, :] & (n[None, :] <= q_pos[:, None]), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            V + blk[:, None] * stride_vb + off[:, None] * stride_vs + kvh * stride_vh + d[None, :],
            mask=kv_mask,
            other=0.0,
        )
        if UPCAST_DOT:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    if SPLIT:  # partial softmax state for _split_reduce_kernel; empty partitions have l = 0
        part = ((b * tl.num_programs(2) + kvh) * tl.num_programs(0) + split).to(tl.int64) * BLOCK_M + rows
        tl.store(M_PART + part, m_i)
        tl.store(L_PART + part, l_i)
        tl.store(ACC_PART + part[:, None] * BLOCK_D + d[None, :], acc)
        return
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # empty context -> zeros
    o_ptrs = OUT + (q_start + tok)[:, None].to(tl.int64) * stride_ot + head[:, None] * stride_oh + d[None, :]
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _split_reduce_kernel(
    OUT,
    M_PART,
    L_PART,
    ACC_PART,
    stride_ot,
    stride_oh,
    num_splits,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """Merge the per-partition (max, sum, acc) softmax states of one (sequence, kv head)."""
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    rows = tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    m = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for s in range(0, num_splits):
        part = ((b * tl.num_programs(1) + kvh) * num_splits + s).to(tl.int64) * BLOCK_M + rows
        m_s = tl.load(M_PART + part)
        l_s = tl.load(L_PART + part)
        acc_s = tl.load(ACC_PART + part[:, None] * BLOCK_D + d[None, :])
        m_new = tl.maximum(m, m_s)
        a_old = tl.exp2(m - m_new)
        a_s = tl.exp2(m_s - m_new)
        l_sum = l_sum * a_old + l_s * a_s
        acc = acc * a_old[:, None] + acc_s * a_s[:, None]
        m = m_new
    out = acc / tl.where(l_sum > 0, l_sum, 1.0)[:, None]
    head = kvh * GROUP + rows
    o_ptrs = OUT + b.to(tl.int64) * stride_ot + head[:, None] * stride_oh + d[None, :]
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=(rows[:, None] < GROUP) & (d[None, :] < HEAD_DIM))


# Split-KV decode ("flash-decoding"): with few (sequence, kv head) pairs, one program per
# pair leaves most SMs idle (batch 1 of SmolLM2 = 3 programs on an H100's 132 SMs), so the
# context is cut into partitions handled by separate programs and merged by a second
# kernel. The partition count comes from block_tables' width (a shape, not a value), so
# the launch stays graph-capturable; partitions past a sequence's end exit at once.
DECODE_PARTITION = 256  # tokens per split program (a multiple of the 64-token key tile)
SPLIT_BELOW_PROGRAMS = 512  # split only while batch * kv_heads is below this


def _launch_attention(
    q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, max_seqlen_q, scale, *, decode: bool
) -> torch.Tensor:
    _, bs, hkv, d = _ref._check_cache(k_cache, v_cache)
    t, hq, dq = q.shape
    if dq != d:
        raise ValueError(f"q head_dim {dq} != cache head_dim {d}")
    group = _ref._check_gqa(hq, hkv)
    batch = seq_lens.shape[0]
    _ref._check_tables(block_tables, seq_lens, batch, bs)
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("k_cache and v_cache must be contiguous in head_dim")
    if block_tables.stride(-1) != 1:
        block_tables = block_tables.contiguous()
    q = _last_contiguous(q)
    out = torch.empty_like(q)
    if t == 0 or batch == 0:
        return out
    rows = max_seqlen_q * group
    max_context = block_tables.shape[1] * bs
    num_splits = triton.cdiv(max_context, DECODE_PARTITION)
    split = decode and num_splits > 1 and batch * hkv < SPLIT_BELOW_PROGRAMS
    # The CPU interpreter's tl.dot mis-handles bfloat16 (numpy has no bf16); there only, the
    # tiles are upcast to fp32 so bf16 still gets tested. On GPU bf16 goes to tensor cores.
    upcast = q.dtype == torch.bfloat16 and _INTERPRET
    block_m = _pow2(group, 16) if decode else min(64, _pow2(rows, 16))
    block_d = _pow2(d, 16)
    if split:
        grid = (num_splits, batch, hkv)
        m_part = torch.empty(batch * hkv * num_splits * block_m, dtype=torch.float32, device=q.device)
        l_part = torch.empty_like(m_part)
        acc_part = torch.empty(m_part.shape[0] * block_d, dtype=torch.float32, device=q.device)
    else:
        grid = (triton.cdiv(rows, block_m), batch, hkv)
        m_part = l_part = acc_part = out  # unused
    _paged_attention_kernel[grid](
        q,
        k_cache,
        v_cache,
        out,
        block_tables,
        seq_lens,
        cu_seqlens_q if cu_seqlens_q is not None else seq_lens,
        m_part,
        l_part,
        acc_part,
        scale * _LOG2E,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        block_tables.stride(0),
        bs,
        HEAD_DIM=d,
        BLOCK_D=block_d,
        GROUP=group,
        BLOCK_M=block_m,
        BLOCK_N=64,
        IS_DECODE=decode,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 or upcast else None,
        UPCAST_DOT=upcast,
        SPLIT=split,
        PARTITION=DECODE_PARTITION,
    )
    if split:
        _split_reduce_kernel[(batch, hkv)](
            out,
            m_part,
            l_part,
            acc_part,
            out.stride(0),
            out.stride(1),
            num_splits,
            HEAD_DIM=d,
            BLOCK_D=block_d,
            GROUP=group,
            BLOCK_M=block_m,
        )
    return out


def paged_attention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """See reference.paged_attention_decode. No host sync: safe inside a CUDA graph."""
    if q.dim() != 3 or q.shape[0] != seq_lens.shape[0]:
        raise ValueError(f"q must be [B={seq_lens.shape[0]}, Hq, D], got {tuple(q.shape)}")
    return _launch_attention(q, k_cache, v_cache, block_tables, seq_lens, None, 1, scale, decode=True)


def paged_attention_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    max_seqlen_q: int,
    scale: float,
) -> torch.Tensor:
    """See reference.paged_attention_prefill.

    Unlike the reference, cu_seqlens_q's values are not checked (that would need a device
    sync); only shapes are. A chunk longer than max_seqlen_q would be silently truncated.
    """
    if q.dim() != 3:
        raise ValueError(f"q must be [T, Hq, D], got {tuple(q.shape)}")
    if cu_seqlens_q.dim() != 1 or cu_seqlens_q.shape[0] != seq_lens.shape[0] + 1:
        raise ValueError(
            f"cu_seqlens_q must be [batch+1={seq_lens.shape[0] + 1}], got {tuple(cu_seqlens_q.shape)}"
        )
    if max_seqlen_q < 1:
        raise ValueError(f"max_seqlen_q must be >= 1, got {max_seqlen_q}")
    return _launch_attention(
        q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, int(max_seqlen_q), scale, decode=False
    )


# --------------------------------------------------------------------------- rms_norm


@triton.jit
def _rms_norm_kernel(
    X,
    R,
    W,
    OUT,
    NEW_R,
    stride_x,
    stride_r,
    n_cols,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(R + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        s = (x + r).to(X.dtype.element_ty)  # round the sum like the eager model does
        tl.store(NEW_R + row * n_cols + cols, s, mask=mask)
        x = s.to(tl.float32)
    var = tl.sum(x * x, axis=0) / n_cols
    h = (x * tl.rsqrt(var + eps)).to(X.dtype.element_ty).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + row * n_cols + cols, (w * h).to(OUT.dtype.element_ty), mask=mask)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """See reference.rms_norm: returns (norm(x [+ residual]), x [+ residual]); inputs untouched."""
    if x.shape[-1] != weight.shape[-1] or weight.dim() != 1:
        raise ValueError(f"weight must be [{x.shape[-1]}], got {tuple(weight.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
    h = x.shape[-1]
    x2 = _last_contiguous(x).reshape(-1, h)
    r2 = _last_contiguous(residual).reshape(-1, h) if residual is not None else x2
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    new_res = torch.empty_like(out) if residual is not None else x
    if x2.shape[0] == 0:
        return out, new_res
    _rms_norm_kernel[(x2.shape[0],)](
        x2,
        r2,
        _last_contiguous(weight),
        out,
        new_res,
        x2.stride(0),
        r2.stride(0),
        h,
        eps,
        HAS_RESIDUAL=residual is not None,
        BLOCK=_pow2(h),
    )
    return out, new_res


# --------------------------------------------------------------------------- rotary


@triton.jit
def _rotary_kernel(
    Q,
    K,
    POS,
    COS,
    SIN,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_cos,
    HQ: tl.constexpr,
    HKV: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HKV: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(POS + t).to(tl.int64)
    d = tl.arange(0, BLOCK_HALF)
    d_ok = d < HALF
    cos = tl.load(COS + pos * stride_cos + d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(SIN + pos * stride_cos + d, mask=d_ok, other=0.0).to(tl.float32)[None, :]

    hq = tl.arange(0, BLOCK_HQ)
    mq = (hq[:, None] < HQ) & d_ok[None, :]
    pq = Q + t * stride_qt + hq[:, None] * stride_qh + d[None, :]
    x1 = tl.load(pq, mask=mq, other=0.0).to(tl.float32)
    x2 = tl.load(pq + HALF, mask=mq, other=0.0).to(tl.float32)
    tl.store(pq, (x1 * cos - x2 * sin).to(Q.dtype.element_ty), mask=mq)
    tl.store(pq + HALF, (x2 * cos + x1 * sin).to(Q.dtype.element_ty), mask=mq)

    hk = tl.arange(0, BLOCK_HKV)
    mk = (hk[:, None] < HKV) & d_ok[None, :]
    pk = K + t * stride_kt + hk[:, None] * stride_kh + d[None, :]
    y1 = tl.load(pk, mask=mk, other=0.0).to(tl.float32)
    y2 = tl.load(pk + HALF, mask=mk, other=0.0).to(tl.float32)
    tl.store(pk, (y1 * cos - y2 * sin).to(K.dtype.element_ty), mask=mk)
    tl.store(pk + HALF, (y2 * cos + y1 * sin).to(K.dtype.element_ty), mask=mk)


def apply_rotary(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
) -> None:
    """See reference.apply_rotary (in place; q and k may be strided views, e.g. of a fused qkv)."""
    _ref._check_rotary(q, k, positions, cos_cache, sin_cache)
    if q.stride(-1) != 1 or k.stride(-1) != 1:
        raise ValueError("q and k must be contiguous in head_dim to be rotated in place")
    if cos_cache.stride(-1) != 1 or sin_cache.stride() != cos_cache.stride():
        raise ValueError("cos_cache and sin_cache must be contiguous with equal strides")
    t, hq, d = q.shape
    if t == 0:
        return
    hkv = k.shape[1]
    _rotary_kernel[(t,)](
        q,
        k,
        positions,
        cos_cache,
        sin_cache,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        cos_cache.stride(0),
        HQ=hq,
        HKV=hkv,
        HALF=d // 2,
        BLOCK_HQ=_pow2(hq),
        BLOCK_HKV=_pow2(hkv),
        BLOCK_HALF=_pow2(d // 2),
    )
