"""EngineConfig validates itself and names the field; EnvSwitches is the one reader of the
engine's environment overrides, and a bad override is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import EngineConfig, EnvSwitches, env_switches


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"block_size": 0}, "block_size"),
        ({"max_batch_size": -1}, "max_batch_size"),
        ({"max_num_batched_tokens": 1.5}, "max_num_batched_tokens"),
        ({"kv_cache_bytes": 0}, "kv_cache_bytes"),
        ({"kv_cache_fraction": 1.5}, "kv_cache_fraction"),
        ({"kv_cache_bytes": 1 << 20, "kv_cache_fraction": 0.5}, "kv_cache_bytes or kv_cache_fraction"),
        ({"weight_mode": "int3"}, "weight_mode"),
    ],
)
def test_bad_values_are_refused_naming_the_field(changes, field) -> None:
    with pytest.raises(ValueError, match=field):
        EngineConfig(**changes)


def test_replace_validates_and_refuses_unknown_names() -> None:
    cfg = EngineConfig(max_batch_size=4)
    assert cfg.replace(weight_mode="q4").weight_mode == "q4"
    assert cfg.replace(weight_mode="q4").max_batch_size == 4
    with pytest.raises(TypeError, match="unknown engine setting"):
        cfg.replace(max_batch=3)
    with pytest.raises(ValueError, match="block_size"):
        cfg.replace(block_size=0)
    assert cfg.core_kwargs()["quant"] is None and "weight_mode" not in cfg.core_kwargs()


def test_env_switches_read_every_override_in_one_place() -> None:
    sw = EnvSwitches.read(
        {
            "RAKIS_DEVICE": "cpu",
            "RAKIS_DTYPE": "bfloat16",
            "RAKIS_QUANT": "Q4",
            "RAKIS_CPU_GEMM": "MKL",
            "RAKIS_NATIVE": "off",
            "RAKIS_FUSED_DECODE": "0",
            "RAKIS_NATIVE_CACHE": "/tmp/k",
            "RAKIS_MODEL_CACHE": "/tmp/m",
            "RAKIS_TORCH_THREADS": "3",
            "CXX": "clang++",
        }
    )
    assert (sw.device, sw.dtype, sw.quant, sw.cpu_gemm, sw.native) == ("cpu", "bfloat16", "q4", "mkl", False)
    assert sw.fused_decode is False
    assert (sw.native_cache, sw.model_cache, sw.torch_threads, sw.cxx) == (
        Path("/tmp/k"),
        Path("/tmp/m"),
        3,
        "clang++",
    )
    default = EnvSwitches.read({})
    assert (default.quant, default.cpu_gemm, default.native, default.native_cache) == (
        None,
        "onednn",
        True,
        None,
    )
    assert default.fused_decode is True


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RAKIS_CPU_GEMM", "blas"),
        ("RAKIS_QUANT", "int3"),
        ("RAKIS_TORCH_THREADS", "0"),
        ("RAKIS_NODES_PER_MACHINE", "x"),
    ],
)
def test_a_bad_override_is_refused_by_name(name, value) -> None:
    with pytest.raises(ValueError, match=name):
        EnvSwitches.read({name: value})


def test_overrides_are_read_when_asked_not_at_import(monkeypatch) -> None:
    monkeypatch.setenv("RAKIS_CPU_GEMM", "mkl")
    assert env_switches().cpu_gemm == "mkl"
    monkeypatch.delenv("RAKIS_CPU_GEMM")
    assert env_switches().cpu_gemm == "onednn"


def test_llm_engine_takes_a_weight_mode_as_its_dtype() -> None:
    from engine.llm_engine import LLMEngine

    eng = LLMEngine(device="cpu", dtype="q4", config=EngineConfig(max_batch_size=2))
    try:
        assert str(eng.dtype) == "torch.float32"  # quantized projections compute in fp32
        assert eng.config.weight_mode == "q4" and eng.config.max_batch_size == 2
    finally:
        eng.close()
