"""Builders for small random paged caches shared by the kernel tests."""

from __future__ import annotations

import torch


def random_paged_cache(
    seq_lens: list[int],
    block_size: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    *,
    spare_blocks: int = 3,
    gen: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random K/V caches and scattered (shuffled) block tables for the given lengths."""
    need = [max(1, -(-n // block_size)) for n in seq_lens]
    num_blocks = sum(need) + spare_blocks
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=gen).to(dtype)
    v_cache = torch.randn(shape, generator=gen).to(dtype)
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    max_blocks = max(need) + 1
    tables = torch.zeros(len(seq_lens), max_blocks, dtype=torch.int32)
    i = 0
    for row, n in enumerate(need):
        tables[row, :n] = torch.tensor(perm[i : i + n], dtype=torch.int32)
        i += n
    return k_cache, v_cache, tables, torch.tensor(seq_lens, dtype=torch.int32)


def tol(dtype: torch.dtype) -> dict[str, float]:
    if dtype == torch.float32:
        return {"atol": 2e-5, "rtol": 1e-5}
    if dtype == torch.float16:
        return {"atol": 3e-3, "rtol": 3e-3}
    return {"atol": 2e-2, "rtol": 2e-2}  # bfloat16: 8 mantissa bits
