"""Paged KV cache: the per-layer K/V block tensors and the block allocator.

Blocks are reference counted because one block can be held at once by several
sequences (a shared prefix) and by the radix prefix cache. A block returns to the
free list only when its last holder lets go; double frees raise instead of silently
corrupting another sequence's context.
"""

from __future__ import annotations

from collections import deque

import torch


class OutOfBlocks(RuntimeError):
    """Not enough free blocks; the scheduler reacts by evicting or preempting."""


class BlockAllocator:
    """Fixed pool of block ids with reference counts."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self._ref = [0] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def refcount(self, block: int) -> int:
        return self._ref[block]

    def allocate(self, n: int = 1) -> list[int]:
        """n fresh blocks with refcount 1, or OutOfBlocks and nothing taken."""
        if n > len(self._free):
            raise OutOfBlocks(f"need {n} blocks, {len(self._free)} free")
        out = [self._free.popleft() for _ in range(n)]
        for b in out:
            self._ref[b] = 1
        return out

    def incref(self, block: int) -> None:
        if self._ref[block] <= 0:
            raise RuntimeError(f"incref of free block {block}")
        self._ref[block] += 1

    def decref(self, block: int) -> bool:
        """Drop one reference; returns True when the block became free."""
        r = self._ref[block]
        if r <= 0:
            raise RuntimeError(f"double free of block {block}")
        self._ref[block] = r - 1
        if r == 1:
            self._free.append(block)
            return True
        return False

    def check_consistency(self) -> None:
        """Assert the free list and refcounts agree (used by tests)."""
        free = set(self._free)
        if len(free) != len(self._free):
            raise AssertionError("block on the free list twice")
        for b in range(self.num_blocks):
            if (self._ref[b] == 0) != (b in free):
                raise AssertionError(f"block {b}: refcount {self._ref[b]} but free={b in free}")


class KVCache:
    """One contiguous tensor holding K and V of every layer.

    Layout per layer (docs/CONTRACTS.md): K and V `[num_blocks, block_size, Hkv, D]`.
    """

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: str | torch.device,
    ) -> None:
        self.num_layers = num_layers
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.data = torch.zeros(
            (num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim), dtype=dtype, device=device
        )
        self.k = [self.data[i, 0] for i in range(num_layers)]
        self.v = [self.data[i, 1] for i in range(num_layers)]

    @staticmethod
    def bytes_per_block(
        num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
    ) -> int:
        elem = torch.empty((), dtype=dtype).element_size()
        return num_layers * 2 * block_size * num_kv_heads * head_dim * elem
