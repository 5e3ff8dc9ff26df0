"""Plain-torch reference ops: the CPU path of the engine and the oracle for the Triton kernels.

Every function here has the same signature and semantics as its Triton twin in
`kernels.triton_ops`; tests compare the two. These are written for clarity and
numerical faithfulness (fp32 accumulation, Hugging Face Llama conventions), not speed,
but they are vectorised so the CPU engine can use them directly.

Conventions shared with the engine (see docs/CONTRACTS.md):
- KV cache per layer: K and V tensors `[num_blocks, block_size, num_kv_heads, head_dim]`.
- `block_tables` int32 `[batch, max_blocks_per_seq]` (unused entries 0), `seq_lens` int32
  `[batch]`, `slot_mapping` int64 `[num_tokens]` = block * block_size + offset.
- A negative slot in `slot_mapping` means "padding token, write nothing", and a sequence
  with `seq_lens == 0` yields an all-zero attention output. Both exist so a CUDA-graph
  runner can pad a batch up to a captured size without touching real cache blocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "store_kv",
    "paged_attention_decode",
    "paged_attention_prefill",
    "rms_norm",
    "apply_rotary",
    "rotary_cos_sin",
    "sample",
]


# --------------------------------------------------------------------------- validation


def _check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple[int, int, int, int]:
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(
            "k_cache and v_cache must both be [num_blocks, block_size, num_kv_heads, head_dim], "
            f"got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    return tuple(k_cache.shape)  # type: ignore[return-value]


def _check_gqa(num_q_heads: int, num_kv_heads: int) -> int:
    if num_q_heads % num_kv_heads != 0:
        raise ValueError(f"num_q_heads={num_q_heads} is not a multiple of num_kv_heads={num_kv_heads}")
    return num_q_heads // num_kv_heads


def _check_tables(block_tables: torch.Tensor, seq_lens: torch.Tensor, batch: int, block_size: int) -> None:
    if block_tables.dim() != 2 or block_tables.shape[0] != batch:
        raise ValueError(
            f"block_tables must be [batch={batch}, max_blocks_per_seq], got {tuple(block_tables.shape)}"
        )
    if seq_lens.dim() != 1 or seq_lens.shape[0] != batch:
        raise ValueError(f"seq_lens must be [batch={batch}], got {tuple(seq_lens.shape)}")


# --------------------------------------------------------------------------- KV cache


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write the new tokens' K/V into their cache slots, in place.

    k, v: `[T, Hkv, D]`; slot_mapping: int64 `[T]`. Negative slots are skipped (padding).
    """
    _, _, hkv, d = _check_cache(k_cache, v_cache)
    if k.dim() != 3 or k.shape != v.shape or k.shape[1:] != (hkv, d):
        raise ValueError(f"k and v must be [T, {hkv}, {d}], got {tuple(k.shape)} and {tuple(v.shape)}")
    if slot_mapping.dim() != 1 or slot_mapping.shape[0] != k.shape[0]:
        raise ValueError(f"slot_mapping must be [T={k.shape[0]}], got {tuple(slot_mapping.shape)}")
    valid = slot_mapping >= 0
    slots = slot_mapping[valid].long()
    k_cache.view(-1, hkv, d)[slots] = k[valid].to(k_cache.dtype)
    v_cache.view(-1, hkv, d)[slots] = v[valid].to(v_cache.dtype)


def _gather_context(cache: torch.Tensor, block_tables: torch.Tensor, max_len: int) -> torch.Tensor:
    """`[B, max_len, Hkv, D]` view of each sequence's first max_len cached tokens."""
    nb, bs, hkv, d = cache.shape
    blocks_needed = max(1, math.ceil(max_len / bs))
    tables = block_tables[:, :blocks_needed].long()
    return cache[tables].reshape(tables.shape[0], blocks_needed * bs, hkv, d)[:, :max_len]


# --------------------------------------------------------------------------- attention


def paged_attention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One query token per sequence attending to its whole cached context.

    q: `[B, Hq, D]`; the token's own K/V must already be in the cache (store_kv first), so
    seq_lens counts it. Returns `[B, Hq, D]` in q's dtype; rows with seq_len 0 are zero.
    """
    b, hq, d = q.shape
    _, bs, hkv, dc = _check_cache(k_cache, v_cache)
    if dc != d:
        raise ValueError(f"q head_dim {d} != cache head_dim {dc}")
    group = _check_gqa(hq, hkv)
    _check_tables(block_tables, seq_lens, b, bs)
    out = torch.zeros_like(q)
    if b == 0:
        return out
    max_len = int(seq_lens.max())
    if max_len == 0:
        return out
    k = _gather_context(k_cache, block_tables, max_len).float()  # [B, L, Hkv, D]
    v = _gather_context(v_cache, block_tables, max_len).float()
    k = k.repeat_interleave(group, dim=2)  # [B, L, Hq, D]
    v = v.repeat_interleave(group, dim=2)
    scores = torch.einsum("bhd,blhd->bhl", q.float(), k) * scale
    pos = torch.arange(max_len, device=q.device)
    mask = pos[None, :] < seq_lens[:, None].to(q.device)  # [B, L]
    scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # empty rows -> 0
    out = torch.einsum("bhl,blhd->bhd", probs, v)
    return out.to(q.dtype)


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
    """Chunked prefill over the paged cache, varlen-packed.

    q: `[T, Hq, D]`, the packed query tokens of B sequences; sequence i owns rows
    `cu_seqlens_q[i]:cu_seqlens_q[i+1]` (int32 `[B+1]`, starting at 0). `seq_lens[i]` is the
    sequence's total context length INCLUDING this chunk, whose K/V must already be stored
    (store_kv first). Query j of a chunk of length n sits at absolute position
    `seq_lens[i] - n + j` and attends causally to every cached position <= its own: that is
    the cached prefix plus the chunk so far. `max_seqlen_q` (host int, >= the longest
    chunk) sizes the Triton grid without a device sync. Decode is the case n = 1.
    Returns `[T, Hq, D]` in q's dtype.
    """
    t, hq, d = q.shape
    _, bs, hkv, dc = _check_cache(k_cache, v_cache)
    if dc != d:
        raise ValueError(f"q head_dim {d} != cache head_dim {dc}")
    group = _check_gqa(hq, hkv)
    b = seq_lens.shape[0]
    _check_tables(block_tables, seq_lens, b, bs)
    if cu_seqlens_q.dim() != 1 or cu_seqlens_q.shape[0] != b + 1:
        raise ValueError(f"cu_seqlens_q must be [batch+1={b + 1}], got {tuple(cu_seqlens_q.shape)}")
    cu = cu_seqlens_q.tolist()
    lens = seq_lens.tolist()
    if cu[0] != 0 or cu[-1] != t:
        raise ValueError(f"cu_seqlens_q must run from 0 to T={t}, got {cu[0]}..{cu[-1]}")
    out = torch.zeros_like(q)
    for i in range(b):
        n = cu[i + 1] - cu[i]
        ctx = lens[i]
        if n < 0 or n > ctx:
            raise ValueError(f"sequence {i}: chunk length {n} must be within 0..seq_len {ctx}")
        if n > max_seqlen_q:
            raise ValueError(f"sequence {i}: chunk length {n} exceeds max_seqlen_q={max_seqlen_q}")
        if n == 0:
            continue
        k = _gather_context(k_cache, block_tables[i : i + 1], ctx)[0].float()  # [ctx, Hkv, D]
        v = _gather_context(v_cache, block_tables[i : i + 1], ctx)[0].float()
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        qi = q[cu[i] : cu[i + 1]].float()  # [n, Hq, D]
        scores = torch.einsum("nhd,lhd->hnl", qi, k) * scale
        q_pos = torch.arange(ctx - n, ctx, device=q.device)
        k_pos = torch.arange(ctx, device=q.device)
        causal = k_pos[None, :] <= q_pos[:, None]  # [n, ctx]
        scores = scores.masked_fill(~causal[None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[cu[i] : cu[i + 1]] = torch.einsum("hnl,lhd->nhd", probs, v).to(q.dtype)
    return out


# --------------------------------------------------------------------------- norm, rotary


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama RMSNorm over the last dim, with an optional fused residual add.

    Without residual: returns `(norm(x), x)` so the caller's first layer can treat x as the
    residual stream. With residual: `s = x + residual` (in x's dtype, as HF does) and
    returns `(norm(s), s)`. Inputs are not modified. Matches HF `LlamaRMSNorm`: statistics
    in fp32, cast back to x's dtype before the weight multiply.
    """
    if x.shape[-1] != weight.shape[-1] or weight.dim() != 1:
        raise ValueError(f"weight must be [{x.shape[-1]}], got {tuple(weight.shape)}")
    if residual is not None:
        if residual.shape != x.shape:
            raise ValueError(f"residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
        s = (x.float() + residual.float()).to(x.dtype)
    else:
        s = x
    h = s.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    out = weight * h.to(x.dtype)
    return out.to(x.dtype), s


def rotary_cos_sin(
    inv_freq: torch.Tensor, max_positions: int, attention_scaling: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build the `[max_positions, D/2]` fp32 cos/sin caches that apply_rotary expects.

    Taking inv_freq (e.g. a HF rotary embedding's `inv_freq` buffer) rather than a base
    keeps every HF rope-scaling variant correct without re-implementing them here.
    """
    t = torch.arange(max_positions, dtype=torch.float32, device=inv_freq.device)
    freqs = torch.outer(t, inv_freq.float())
    return freqs.cos() * attention_scaling, freqs.sin() * attention_scaling


def _check_rotary(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
) -> None:
    if q.dim() != 3 or k.dim() != 3 or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"q must be [T, Hq, D] and k [T, Hkv, D], got {tuple(q.shape)} and {tuple(k.shape)}")
    d = q.shape[2]
    if d % 2:
        raise ValueError(f"head_dim must be even for rotary, got {d}")
    if positions.dim() != 1 or positions.shape[0] != q.shape[0]:
        raise ValueError(f"positions must be [T={q.shape[0]}], got {tuple(positions.shape)}")
    if cos_cache.dim() != 2 or cos_cache.shape != sin_cache.shape or cos_cache.shape[1] != d // 2:
        raise ValueError(
            f"cos_cache and sin_cache must be [max_pos, {d // 2}], got {tuple(cos_cache.shape)}, {tuple(sin_cache.shape)}"
        )


def apply_rotary(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
) -> None:
    """Rotate q `[T, Hq, D]` and k `[T, Hkv, D]` in place, Llama rotate-half convention.

    cos_cache, sin_cache: `[max_pos, D/2]` (see rotary_cos_sin); half width because the
    rotate-half layout repeats the same angle for both halves. Math in fp32, then cast.
    """
    _check_rotary(q, k, positions, cos_cache, sin_cache)
    pos = positions.long()
    cos = cos_cache[pos].float()[:, None, :]  # [T, 1, D/2]
    sin = sin_cache[pos].float()[:, None, :]
    for x in (q, k):
        half = x.shape[-1] // 2
        xf = x.float()
        x1, x2 = xf[..., :half], xf[..., half:]
        x.copy_(torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1))


# --------------------------------------------------------------------------- sampling


def _as_row_tensor(value, batch: int, dtype: torch.dtype, device: torch.device, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=dtype, device=device)
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"{name} must be a scalar or have one entry per row ({batch}), got {tuple(t.shape)}")
    return t


_NUCLEUS_CANDIDATES = 1024


def _candidate_count(k: torch.Tensor, p: torch.Tensor, greedy: torch.Tensor, vocab: int) -> int:
    """How many best logits _top_k_top_p must rank (host tensors, so no device sync)."""
    topk_on = k < vocab
    sampled = ~greedy
    if bool((sampled & ~topk_on & (p >= 1)).any()):
        return vocab  # a sampled row keeps the whole vocabulary
    k_on_max = int(torch.where(topk_on, k, 1).max())
    nucleus_only = bool((sampled & ~topk_on).any())
    return min(vocab, max(_NUCLEUS_CANDIDATES, k_on_max) if nucleus_only else k_on_max)


def _top_k_top_p(
    x: torch.Tensor, k: torch.Tensor, p: torch.Tensor, greedy: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Filtered candidates of scaled logits x `[B, V]`, best first: (logits, vocab ids).

    Dropped candidates get -inf. A full-vocabulary sort costs ~5 ms per row at V=49152 on
    CPU, so only the best n logits are ranked (a partial top-k, O(V)); the caller picks
    n >= every enabled top_k, which is exact for rows with top-k on, and for top-p-only rows
    whose nucleus fits in those candidates (top-p mass is measured against the full
    softmax). If one does not fit, the whole vocabulary is sorted instead.
    """
    vocab = x.shape[1]
    topk_on = k < vocab
    full_lse = x.logsumexp(dim=-1)
    while True:
        xc, order = x.topk(n, dim=-1) if n < vocab else x.sort(dim=-1, descending=True)
        drop = torch.arange(n, device=x.device)[None, :] >= k[:, None]
        masked = xc.masked_fill(drop, float("-inf"))
        # top-k first, then top-p over the renormalised survivors (HF generate's order).
        lse = torch.where(topk_on, masked.logsumexp(dim=-1), full_lse)
        probs = (masked - lse[:, None]).exp()
        drop |= (probs.cumsum(dim=-1) - probs) >= p[:, None]
        drop[:, 0] = False
        if n == vocab:
            return xc.masked_fill(drop, float("-inf")), order
        fits = greedy | topk_on | ((p < 1) & (probs.sum(dim=-1) >= p))
        if bool(fits.all()):  # the only host sync, and only for top-p-only rows
            return xc.masked_fill(drop, float("-inf")), order
        n = vocab


def sample(
    logits: torch.Tensor,
    temperature: torch.Tensor | Sequence[float] | float,
    top_p: torch.Tensor | Sequence[float] | float,
    top_k: torch.Tensor | Sequence[int] | int,
    generators: Sequence[torch.Generator | None] | None = None,
) -> torch.Tensor:
    """Pick one token id per row of logits `[B, V]`; returns int64 `[B]`.

    Per-row parameters: temperature <= 0 means greedy (argmax); top_k <= 0 or >= V
    disables top-k; top_p >= 1 disables top-p; top-k applies first, then top-p on the
    renormalised survivors (as HF generate does). `generators[i]` (or None) seeds row i:
    each row draws one uniform from its own generator and inverts its CDF, so a request
    with a seed gets the same token whatever else shares its batch.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, V], got {tuple(logits.shape)}")
    b, vocab = logits.shape
    dev = logits.device
    # Parameters are checked and every branch decided on the host, so on CUDA the only
    # syncs are the caller's read of the result (and a rare top-p fallback).
    cpu = torch.device("cpu")
    temp = _as_row_tensor(temperature, b, torch.float32, cpu, "temperature")
    p = _as_row_tensor(top_p, b, torch.float32, cpu, "top_p")
    k = _as_row_tensor(top_k, b, torch.int64, cpu, "top_k")
    if generators is not None and len(generators) != b:
        raise ValueError(f"generators must have one entry per row ({b}), got {len(generators)}")
    if torch.any((p <= 0) | (p > 1)):
        raise ValueError("top_p must be in (0, 1]")
    for i, gen in enumerate(generators or ()):
        if gen is not None and gen.device != dev:
            raise ValueError(f"generator {i} is on {gen.device}, logits on {dev}")

    greedy = temp <= 0
    if bool(greedy.all()):
        return logits.argmax(dim=-1)
    k = torch.where((k <= 0) | (k > vocab), torch.full_like(k, vocab), k)
    filtering = bool((k < vocab).any() or (p < 1).any())
    n = _candidate_count(k, p, greedy, vocab)
    temp, p, k, greedy = (t.to(dev, non_blocking=True) for t in (temp, p, k, greedy))

    x = logits.float() / torch.where(greedy, torch.ones_like(temp), temp)[:, None]
    order = None
    if filtering:
        x, order = _top_k_top_p(x, k, p, greedy, n)
    cdf = x.softmax(dim=-1).cumsum(dim=-1)

    # Inverse-CDF draw: one uniform per row (cheap, unlike V exponentials or Gumbels),
    # from the row's own generator when it has one.
    u = torch.rand(b, device=dev)
    for i, gen in enumerate(generators or ()):
        if gen is not None:
            u[i] = torch.rand(1, generator=gen, device=dev)[0]
    choice = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp_(max=cdf.shape[1] - 1)
    sampled = (order.gather(1, choice) if order is not None else choice)[:, 0]
    return torch.where(greedy, logits.argmax(dim=-1), sampled)
