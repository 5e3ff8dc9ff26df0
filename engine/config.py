"""The engine's settings in one validated object, and its documented environment overrides.

``EngineConfig`` is what an engine worker is built from (nano-vllm's one config
object): KV cache, batching, prefix cache and the weight mode. It checks itself when
made, so a bad value fails at start-up with the field's name, not deep in a worker
thread. ``LLMEngine`` holds one and hands each ``EngineCore`` the fields it needs.

``EnvSwitches`` is the one place that reads the engine's environment variables. They
stay, as documented overrides for operators and tests (README, "Performance"):

- ``RAKIS_DEVICE`` / ``RAKIS_DTYPE``: the device and compute dtype when not given;
- ``RAKIS_QUANT``: ``int8 | q4`` weights when no mode is configured;
- ``RAKIS_CPU_GEMM=mkl``: plain ``F.linear`` instead of oneDNN packed projections;
- ``RAKIS_NATIVE=0``: no native C kernels (torch ops instead);
- ``RAKIS_FUSED_DECODE=0``: quantized decode steps go op by op instead of through one
  native call per step (engine.fused_decode; the op-by-op path is its oracle);
- ``RAKIS_NATIVE_CACHE`` / ``RAKIS_MODEL_CACHE``: where built kernels and converted
  models are kept (services without a writable home);
- ``RAKIS_TORCH_THREADS`` / ``RAKIS_NODES_PER_MACHINE``: the thread budget;
- ``CXX``: the compiler for the native kernels.

They are read when asked (``env_switches()``), not at import, so a test or a process
that sets one before building an engine gets it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["WEIGHT_MODES", "EngineConfig", "EnvSwitches", "env_switches"]

WEIGHT_MODES = ("int8", "q4")
_OFF = ("0", "false", "no", "off")
_NO_QUANT = ("", "none", "off", "fp32", "float32", "bf16", "bfloat16", "auto")


@dataclass(frozen=True, slots=True)
class EnvSwitches:
    """The engine's environment overrides, read together and checked."""

    device: str | None = None
    dtype: str | None = None
    quant: str | None = None  # int8 | q4 | None
    cpu_gemm: str = "onednn"  # onednn | mkl
    native: bool = True
    fused_decode: bool = True
    native_cache: Path | None = None
    model_cache: Path | None = None
    cxx: str | None = None
    torch_threads: int | None = None
    nodes_per_machine: int | None = None

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> EnvSwitches:
        env = os.environ if environ is None else environ
        gemm = (env.get("RAKIS_CPU_GEMM") or "onednn").strip().lower()
        if gemm not in ("onednn", "mkl"):
            raise ValueError(f"RAKIS_CPU_GEMM must be onednn or mkl, got {gemm!r}")
        quant = (env.get("RAKIS_QUANT") or "none").strip().lower()
        if quant not in _NO_QUANT and quant not in WEIGHT_MODES:
            raise ValueError(f"RAKIS_QUANT must be one of none, {', '.join(WEIGHT_MODES)}; got {quant!r}")
        return cls(
            device=env.get("RAKIS_DEVICE") or None,
            dtype=env.get("RAKIS_DTYPE") or None,
            quant=None if quant in _NO_QUANT else quant,
            cpu_gemm=gemm,
            native=(env.get("RAKIS_NATIVE") or "1").strip().lower() not in _OFF,
            fused_decode=(env.get("RAKIS_FUSED_DECODE") or "1").strip().lower() not in _OFF,
            native_cache=Path(env["RAKIS_NATIVE_CACHE"]) if env.get("RAKIS_NATIVE_CACHE") else None,
            model_cache=Path(env["RAKIS_MODEL_CACHE"]) if env.get("RAKIS_MODEL_CACHE") else None,
            cxx=env.get("CXX") or None,
            torch_threads=_positive_int(env, "RAKIS_TORCH_THREADS"),
            nodes_per_machine=_positive_int(env, "RAKIS_NODES_PER_MACHINE"),
        )


def _positive_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


def env_switches() -> EnvSwitches:
    """The overrides in force now (read from the environment on each call)."""
    return EnvSwitches.read()


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """How each engine worker is built; validated when made.

    ``weight_mode``: None keeps the compute dtype's own weights; ``int8`` / ``q4``
    keep projections quantized (CPU, fp32 compute; ``RAKIS_QUANT`` when None).
    """

    kv_cache_bytes: int | None = None
    kv_cache_fraction: float | None = None
    block_size: int = 16
    max_batch_size: int = 32
    max_num_batched_tokens: int = 512
    enable_prefix_cache: bool = True
    weight_mode: str | None = None

    def __post_init__(self) -> None:
        for name in ("block_size", "max_batch_size", "max_num_batched_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.kv_cache_bytes is not None and self.kv_cache_fraction is not None:
            raise ValueError("give kv_cache_bytes or kv_cache_fraction, not both")
        if self.kv_cache_bytes is not None and (
            isinstance(self.kv_cache_bytes, bool)
            or not isinstance(self.kv_cache_bytes, int)
            or self.kv_cache_bytes < 1
        ):
            raise ValueError(f"kv_cache_bytes must be a positive integer, got {self.kv_cache_bytes!r}")
        if self.kv_cache_fraction is not None and not (0.0 < self.kv_cache_fraction <= 1.0):
            raise ValueError(f"kv_cache_fraction must be in (0, 1], got {self.kv_cache_fraction}")
        if self.weight_mode is not None and self.weight_mode not in WEIGHT_MODES:
            raise ValueError(f"weight_mode must be None or one of {WEIGHT_MODES}, got {self.weight_mode!r}")

    def replace(self, **changes: Any) -> EngineConfig:
        """A copy with ``changes`` (validated again); unknown names are an error."""
        unknown = sorted(set(changes) - set(asdict(self)))
        if unknown:
            raise TypeError(f"unknown engine setting(s): {', '.join(unknown)}")
        return EngineConfig(**{**asdict(self), **changes})

    def core_kwargs(self) -> dict[str, Any]:
        """The keyword arguments ``EngineCore`` takes from this config."""
        out = asdict(self)
        out["quant"] = out.pop("weight_mode")
        return out
