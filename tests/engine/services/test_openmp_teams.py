"""engine.devices: one thread's OpenMP team size, and work done on a passing thread.

Why these matter: libgomp throttles every team once a process holds more OpenMP threads
than CPUs, which made the engine's worker thread decode 2-3x slower
(docs/benchmarks.md). The daemon therefore pins each thread's count itself.
"""

from __future__ import annotations

import threading

import pytest
import torch

from engine import devices


def test_own_openmp_team_sticks_to_its_thread_when_the_process_count_changes_later() -> None:
    before = torch.get_num_threads()
    own = threading.Event()
    changed = threading.Event()
    seen: dict[str, int] = {}

    def worker() -> None:
        devices.own_openmp_team(1)
        own.set()
        changed.wait(10)
        x = torch.randn(256, 256)
        torch.mm(x, x)  # the first parallel op: torch would copy the process count here
        seen["after_op"] = torch.get_num_threads()

    t = threading.Thread(target=worker)
    t.start()
    try:
        assert own.wait(10)
        torch.set_num_threads(2)  # the process-wide count moves on after the worker set its own
        changed.set()
        t.join(10)
        assert seen["after_op"] == 1
        # A thread that never pinned its count takes the process-wide one.
        assert devices.on_passing_thread(torch.get_num_threads) == 2
    finally:
        torch.set_num_threads(before)


def test_own_openmp_team_refuses_zero() -> None:
    with pytest.raises(ValueError, match="threads must be >= 1"):
        devices.own_openmp_team(0)


def test_on_passing_thread_returns_the_result_from_another_thread() -> None:
    caller = threading.get_ident()
    ident, value = devices.on_passing_thread(lambda a, b=0: (threading.get_ident(), a + b), 2, b=3)
    assert value == 5 and ident != caller


def test_on_passing_thread_raises_the_functions_error_in_the_caller() -> None:
    def boom() -> None:
        raise KeyError("weights missing")

    with pytest.raises(KeyError, match="weights missing"):
        devices.on_passing_thread(boom)


def test_embedding_engine_refuses_a_bad_openmp_count() -> None:
    from engine.embedding import EmbeddingEngine

    with pytest.raises(ValueError, match="openmp_threads must be >= 1"):
        EmbeddingEngine(openmp_threads=0)
