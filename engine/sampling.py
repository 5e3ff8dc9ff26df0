"""Token selection for one engine step.

Greedy rows take argmax; the rest go through the op set's `sample` (temperature,
top-k, top-p) with one torch.Generator per seeded request, so a request's draws
depend only on its own seed and its own logits, never on its batch neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.types import SamplingParams


def make_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """Per-request RNG; None (global RNG) for unseeded requests."""
    if params.temperature <= 0 or params.seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(params.seed)
    return g


def sample_tokens(
    ops,
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> list[int]:
    """One token id per logits row, following each row's SamplingParams."""
    if all(p.temperature <= 0 for p in params):
        return logits.argmax(dim=-1).tolist()
    temps = [float(p.temperature) for p in params]
    top_p = [float(p.top_p) for p in params]
    top_k = [int(p.top_k) for p in params]
    return ops.sample(logits, temps, top_p, top_k, list(generators)).tolist()
