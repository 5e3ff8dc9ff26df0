"""engine.kernels: paged attention, RMSNorm, rotary and sampling ops for the engine.

`get_ops(device)` returns one `Ops` set: the Triton kernels on CUDA (when triton imports),
the plain-torch references everywhere else. Both sets share signatures (docs/CONTRACTS.md),
so the engine's model runner is written once against `ops.<name>`.
Set `RAKIS_KERNELS=reference` to force the torch references on CUDA (debugging, A/B).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Ops", "get_ops"]


@dataclass(frozen=True)
class Ops:
    """The op set a model runner calls; `backend` is "triton" or "reference"."""

    backend: str
    store_kv: Callable[..., None]
    paged_attention_decode: Callable[..., torch.Tensor]
    paged_attention_prefill: Callable[..., torch.Tensor]
    rms_norm: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    apply_rotary: Callable[..., None]
    sample: Callable[..., torch.Tensor]


def _from_module(backend: str, mod) -> Ops:
    return Ops(
        backend=backend,
        store_kv=mod.store_kv,
        paged_attention_decode=mod.paged_attention_decode,
        paged_attention_prefill=mod.paged_attention_prefill,
        rms_norm=mod.rms_norm,
        apply_rotary=mod.apply_rotary,
        sample=mod.sample,
    )


def get_ops(device: str | torch.device = "cpu") -> Ops:
    """Op set for tensors on `device`: Triton on CUDA, torch references otherwise.

    Triton is imported lazily so CPU-only nodes never pay for (or depend on) it; a missing
    or broken triton falls back to the references rather than failing the engine.
    """
    dev = torch.device(device)
    from engine.kernels import reference

    if dev.type != "cuda" or os.environ.get("RAKIS_KERNELS", "").lower() == "reference":
        return _from_module("reference", reference)
    try:
        from engine.kernels import triton_ops
    except ImportError:
        return _from_module("reference", reference)
    return _from_module("triton", triton_ops)
