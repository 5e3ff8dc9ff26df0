"""Model registry, device/dtype/thread choices, and the engine log."""

from __future__ import annotations

import time

import pytest
import torch

from engine import devices
from engine.engine_logs import EngineLog, LogType
from engine.model_files import minilm_dir
from engine.registry import (
    DEFAULT_EMBEDDING,
    DEFAULT_LLM,
    GEMMA3_270M,
    ModelKind,
    ModelRegistry,
    UnknownModelError,
)

# ---- registry


def test_builtins_are_registered_and_minilm_resolves_offline() -> None:
    reg = ModelRegistry()
    assert reg.names() == sorted([DEFAULT_LLM, GEMMA3_270M, DEFAULT_EMBEDDING])
    assert reg.names(ModelKind.LLM) == sorted([DEFAULT_LLM, GEMMA3_270M])  # two real families
    assert reg.names(ModelKind.EMBEDDING) == [DEFAULT_EMBEDDING]
    assert reg.resolve(DEFAULT_EMBEDDING, ModelKind.EMBEDDING) == minilm_dir()


def test_user_model_by_local_path(tiny_llama_dir) -> None:
    reg = ModelRegistry({"my-llama": tiny_llama_dir})
    assert reg.entry("my-llama").kind == ModelKind.LLM  # detected from config.json
    assert reg.resolve("my-llama", "llm") == tiny_llama_dir.resolve()
    reg.add("my-minilm", minilm_dir())
    assert reg.entry("my-minilm").kind == ModelKind.EMBEDDING  # detected from modules.json


def test_unknown_model_error_names_it_and_lists_available() -> None:
    reg = ModelRegistry()
    with pytest.raises(UnknownModelError) as info:
        reg.resolve("gpt-17")
    msg = str(info.value)
    assert "'gpt-17'" in msg and DEFAULT_LLM in msg and DEFAULT_EMBEDDING in msg
    with pytest.raises(UnknownModelError, match="embedding model, not llm"):
        reg.entry(DEFAULT_EMBEDDING, ModelKind.LLM)


def test_bad_additions_change_nothing(tmp_path) -> None:
    reg = ModelRegistry()
    before = reg.names()
    with pytest.raises(FileNotFoundError, match="'ghost'.*does not exist"):
        reg.add("ghost", tmp_path / "nope")
    with pytest.raises(ValueError, match="invalid model name"):
        reg.add("has space", minilm_dir())
    with pytest.raises(ValueError, match="already registered"):
        reg.add(DEFAULT_EMBEDDING, minilm_dir())
    with pytest.raises(ValueError, match="neither config.json"):
        reg.add("empty", tmp_path)
    assert reg.names() == before


def test_registered_path_that_disappears_is_reported_by_name(tmp_path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    reg = ModelRegistry({"vanishing": d})
    (d / "config.json").unlink()
    d.rmdir()
    with pytest.raises(UnknownModelError, match="'vanishing'.*files are missing"):
        reg.resolve("vanishing")


# ---- devices


def test_device_and_dtype_defaults_and_overrides(monkeypatch) -> None:
    monkeypatch.delenv(devices.ENV_DEVICE, raising=False)
    monkeypatch.delenv(devices.ENV_DTYPE, raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert devices.resolve_device() == expected
    assert devices.resolve_device("CPU") == "cpu"
    assert devices.resolve_dtype("cpu") == torch.float32
    assert devices.resolve_dtype("cpu", "bf16") == torch.bfloat16
    assert devices.resolve_dtype("cpu", torch.float16) == torch.float16
    monkeypatch.setenv(devices.ENV_DTYPE, "fp16")
    assert devices.resolve_dtype("cpu") == torch.float16
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        devices.resolve_device("tpu")
    with pytest.raises(ValueError, match="unknown dtype 'int3'"):
        devices.resolve_dtype("cpu", "int3")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            devices.resolve_device("cuda")


def test_thread_budget_splits_cores_between_nodes_and_workers(monkeypatch) -> None:
    monkeypatch.delenv(devices.ENV_THREADS, raising=False)
    monkeypatch.delenv(devices.ENV_NODES_PER_MACHINE, raising=False)
    assert devices.thread_budget(1, total_cores=16) == 16
    assert devices.thread_budget(2, nodes_on_machine=4, total_cores=16) == 2
    assert devices.thread_budget(8, nodes_on_machine=4, total_cores=16) == 1  # never below one
    monkeypatch.setenv(devices.ENV_NODES_PER_MACHINE, "8")
    assert devices.thread_budget(1, total_cores=16) == 2
    monkeypatch.setenv(devices.ENV_THREADS, "3")
    assert devices.thread_budget(4, total_cores=16) == 3
    monkeypatch.setenv(devices.ENV_THREADS, "zero")
    with pytest.raises(ValueError, match="RAKIS_TORCH_THREADS must be a positive integer"):
        devices.thread_budget()
    with pytest.raises(ValueError):
        devices.thread_budget(0)


# ---- log


def test_log_search_filters_combine() -> None:
    log = EngineLog(max_entries=100)
    t0 = time.time()
    log.append(LogType.LOAD, worker_id="w1", model="m")
    log.append(LogType.START, worker_id="w1", model="m", request_id="r1")
    log.append(LogType.START, worker_id="w2", model="m", request_id="r2")
    log.append(LogType.FINISH, worker_id="w1", model="m", request_id="r1", tokens=5, tokens_per_s=10.0)
    log.append("abort", worker_id="w2", model="m", request_id="r2")
    assert [e.type for e in log.search(request_id="r1")] == [LogType.START, LogType.FINISH]
    assert [e.request_id for e in log.search(type="start")] == ["r1", "r2"]
    assert [e.type for e in log.search(worker_id="w2")] == [LogType.START, LogType.ABORT]
    assert [e.request_id for e in log.search(type=["finish", LogType.ABORT])] == ["r1", "r2"]
    assert log.search(type="start", worker_id="w2", request_id="r1") == []
    assert len(log.search(since=t0)) == 5 and log.search(since=time.time() + 10) == []
    assert [e.seq for e in log.search(limit=2)] == [4, 5]
    assert [e.seq for e in log.last(2)] == [4, 5] and log.last(0) == [] and len(log.last()) == 5
    assert log.search(request_id="r1")[-1].to_dict()["type"] == "finish"
    with pytest.raises(ValueError, match="unknown log type 'bogus'; valid types: load"):
        log.search(type="bogus")
    with pytest.raises(ValueError):
        log.last(-1)


def test_log_is_bounded() -> None:
    log = EngineLog(max_entries=3)
    for i in range(10):
        log.append(LogType.PROGRESS, request_id=str(i))
    assert [e.request_id for e in log.last()] == ["7", "8", "9"]
