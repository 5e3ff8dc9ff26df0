"""rakis engine: local compute for a node.

Public entry points (imported lazily so `import engine.model_files` and friends
stay cheap and free of import cycles with the engine core):

- `LLMEngine`, `LLMRequest`, `InferenceStream`, `InferenceResult` — LLM worker pools.
- `EmbeddingEngine`, `EmbeddingResult`, `Priority` — embedding worker pools.
- `ModelRegistry`, `ModelKind`, `UnknownModelError`, `DEFAULT_LLM`, `GEMMA3_270M`,
  `DEFAULT_EMBEDDING`.
- The core's dataclasses: `SamplingParams`, `GenerationRequest`, `TokenEvent`,
  `GenerationResult`, and for proof of inference `RecheckRequest`, `RecheckResult`,
  `PositionDetail`, `RecheckTolerance` (engine.recheck; `LLMEngine.recheck`).
- `uniform(seed, t)`, `default_seed(request_id)`: the verifiable sampler's draws
  (engine.sampling).
- `EngineConfig`: how each worker is built (KV cache, batching, prefix cache, weight
  mode), validated once; `env_switches()`: the one reader of the engine's documented
  environment overrides (engine.config).
- `engine.devices`: device, dtype and CPU-thread choices; `own_openmp_team` and
  `on_passing_thread` keep one OpenMP team per engine worker (libgomp throttles every
  team once a process holds more OpenMP threads than CPUs).

- `engine.quant` keeps projections in GGML's Q4_1 / Q8_0 blocks (int8 / q4 modes);
  `engine.fused_decode` runs a quantized model's decode-only steps through every layer
  in one native call (engine/native/decode_step.cpp), the op-by-op forward in
  engine.model being its oracle.

Subpackages: `engine.native` (C++ CPU kernels built on first use) and `engine.kernels`
(the op contract: plain-torch references, Triton ops for CUDA, the CUDA-graph runner).
`engine.kernels` was a top-level `kernels` package until transformers 5.25 began to
depend on Hugging Face's own `kernels` distribution, which a top-level name of ours shadowed.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LLMEngine": "engine.llm_engine",
    "LLMRequest": "engine.llm_engine",
    "InferenceStream": "engine.llm_engine",
    "InferenceResult": "engine.llm_engine",
    "LLMWorkerState": "engine.llm_engine",
    "ModelAvailability": "engine.llm_engine",
    "NoWorkerError": "engine.llm_engine",
    "pick_model": "engine.llm_engine",
    "EmbeddingEngine": "engine.embedding",
    "EmbeddingResult": "engine.embedding",
    "EmbeddingWorkerState": "engine.embedding",
    "load_embed_fn": "engine.embedding",
    "Priority": "engine.embedding",
    "EngineError": "engine.embedding",
    "JobExpiredError": "engine.embedding",
    "EngineClosedError": "engine.embedding",
    "ModelRegistry": "engine.registry",
    "ModelKind": "engine.registry",
    "UnknownModelError": "engine.registry",
    "DEFAULT_LLM": "engine.registry",
    "GEMMA3_270M": "engine.registry",
    "DEFAULT_EMBEDDING": "engine.registry",
    "LogEntry": "engine.engine_logs",
    "LogType": "engine.engine_logs",
    "SamplingParams": "engine.types",
    "GenerationRequest": "engine.types",
    "TokenEvent": "engine.types",
    "GenerationResult": "engine.types",
    "RecheckRequest": "engine.types",
    "RecheckResult": "engine.types",
    "PositionDetail": "engine.types",
    "RecheckTolerance": "engine.recheck",
    "DEFAULT_TOLERANCE": "engine.recheck",
    "EngineConfig": "engine.config",
    "env_switches": "engine.config",
    "uniform": "engine.sampling",
    "default_seed": "engine.sampling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
