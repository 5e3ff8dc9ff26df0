"""Radix-tree prefix cache over KV blocks.

Each edge is one *full* block of token ids, so a path from the root spells a token
prefix whose K/V already sit in the cache, block by block. Requests that share a
system prompt or a chat history walk the same path and reuse those blocks instead
of recomputing them. Only full blocks are shared, so no sequence ever writes into a
shared block. The tree holds one reference per cached block; a leaf whose block
nobody else holds is evictable, least recently used first.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence

from engine.kv_cache import BlockAllocator


class _Node:
    __slots__ = ("parent", "key", "block", "children", "last_access")

    def __init__(self, parent: _Node | None, key: tuple[int, ...], block: int) -> None:
        self.parent = parent
        self.key = key
        self.block = block
        self.children: dict[tuple[int, ...], _Node] = {}
        self.last_access = 0


class RadixCache:
    def __init__(self, allocator: BlockAllocator, block_size: int) -> None:
        self.allocator = allocator
        self.block_size = block_size
        self.root = _Node(None, (), -1)
        self._clock = itertools.count(1)
        self.num_blocks = 0
        self.hit_tokens = 0
        self.query_tokens = 0
        self.queries = 0
        self.hit_queries = 0

    def _keys(self, tokens: Sequence[int], n_blocks: int):
        bs = self.block_size
        for i in range(n_blocks):
            yield tuple(tokens[i * bs : (i + 1) * bs])

    def match(self, tokens: Sequence[int], max_tokens: int | None = None) -> list[int]:
        """Longest cached prefix of `tokens` (at most max_tokens, whole blocks), as block ids.

        The caller receives one new reference on every returned block and must decref
        them when done. Counts toward the hit-rate statistics.
        """
        limit = len(tokens) if max_tokens is None else min(max_tokens, len(tokens))
        n_blocks = limit // self.block_size
        node = self.root
        now = next(self._clock)
        blocks: list[int] = []
        for key in self._keys(tokens, n_blocks):
            child = node.children.get(key)
            if child is None:
                break
            child.last_access = now
            blocks.append(child.block)
            node = child
        for b in blocks:
            self.allocator.incref(b)
        self.queries += 1
        self.query_tokens += limit
        self.hit_tokens += len(blocks) * self.block_size
        if blocks:
            self.hit_queries += 1
        return blocks

    def peek(self, tokens: Sequence[int], max_tokens: int | None = None) -> int:
        """Number of leading tokens that match() would return, without side effects."""
        limit = len(tokens) if max_tokens is None else min(max_tokens, len(tokens))
        node = self.root
        n = 0
        for key in self._keys(tokens, limit // self.block_size):
            node = node.children.get(key)  # type: ignore[assignment]
            if node is None:
                break
            n += self.block_size
        return n

    def insert(self, tokens: Sequence[int], blocks: Sequence[int]) -> None:
        """Record that blocks[i] holds tokens[i*bs:(i+1)*bs] (full blocks only).

        Where the tree already has a block for a prefix, it keeps its own and the
        caller's duplicate stays private to the caller.
        """
        n_blocks = min(len(blocks), len(tokens) // self.block_size)
        node = self.root
        now = next(self._clock)
        for i, key in enumerate(self._keys(tokens, n_blocks)):
            child = node.children.get(key)
            if child is None:
                child = _Node(node, key, blocks[i])
                self.allocator.incref(blocks[i])
                node.children[key] = child
                self.num_blocks += 1
            child.last_access = now
            node = child

    def evict(self, n: int) -> int:
        """Free up to n blocks held only by the tree, least recently used leaves first."""
        if n <= 0:
            return 0
        heap: list[tuple[int, int, _Node]] = []
        tie = itertools.count()
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            elif self.allocator.refcount(node.block) == 1:
                heap.append((node.last_access, next(tie), node))
        heapq.heapify(heap)
        freed = 0
        while heap and freed < n:
            _, _, node = heapq.heappop(heap)
            parent = node.parent
            assert parent is not None
            del parent.children[node.key]
            self.allocator.decref(node.block)
            self.num_blocks -= 1
            freed += 1
            if parent is not self.root and not parent.children and self.allocator.refcount(parent.block) == 1:
                heapq.heappush(heap, (parent.last_access, next(tie), parent))
        return freed

    def clear(self) -> None:
        """Drop every cached block reference."""
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            self.allocator.decref(node.block)
        self.root.children.clear()
        self.num_blocks = 0
