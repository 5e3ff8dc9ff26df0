"""Device, dtype and CPU-thread choices for engine workers.

One place decides these so every worker of a node agrees, and so a config file can
override them. The thread budget matters because several nodes (a local testnet)
often share one machine: if each let torch take every core, they would all slow
down far more than they gain.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from engine.config import env_switches

_DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")

#: Environment overrides, read when no explicit value is given.
ENV_DEVICE = "RAKIS_DEVICE"
ENV_DTYPE = "RAKIS_DTYPE"
ENV_THREADS = "RAKIS_TORCH_THREADS"
ENV_NODES_PER_MACHINE = "RAKIS_NODES_PER_MACHINE"

_T = TypeVar("_T")


def cuda_available() -> bool:
    """True when torch can use a CUDA device."""
    return torch.cuda.is_available()


def resolve_device(device: str | None = None) -> str:
    """Return the device string workers should use.

    `None` or "auto" (or the RAKIS_DEVICE variable) picks CUDA when present, else
    CPU. Asking for CUDA on a machine without it is an error rather than a silent
    fallback, so a misconfigured GPU node does not quietly run 50x slower.
    """
    if device is None:
        device = env_switches().device or "auto"
    device = device.strip().lower()
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if not _DEVICE_RE.match(device):
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if device.startswith("cuda"):
        if not cuda_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    return device


def resolve_dtype(device: str, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """Return the compute dtype for `device`.

    Default: float32 on CPU (bf16/fp16 matmuls are slow or inexact there), bfloat16
    on CUDA when the GPU supports it, else float16. An explicit value (or
    RAKIS_DTYPE) wins.
    """
    if dtype is None:
        dtype = env_switches().dtype or "auto"
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPE_NAMES.values():
            raise ValueError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")
        return dtype
    name = dtype.strip().lower()
    if name == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in _DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of: auto, {', '.join(sorted(_DTYPE_NAMES))}")
    return _DTYPE_NAMES[name]


def available_cores() -> int:
    """CPU cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def thread_budget(
    workers: int = 1,
    *,
    nodes_on_machine: int | None = None,
    total_cores: int | None = None,
) -> int:
    """Torch threads each of `workers` concurrent workers should use.

    The machine's cores are split between the nodes sharing it (argument or
    RAKIS_NODES_PER_MACHINE) and then between this node's busy workers, never below
    one. RAKIS_TORCH_THREADS, when set, is taken as the answer.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    switches = env_switches()
    if switches.torch_threads is not None:
        return switches.torch_threads
    if nodes_on_machine is None:
        nodes_on_machine = switches.nodes_per_machine or 1
    if nodes_on_machine < 1:
        raise ValueError(f"nodes_on_machine must be >= 1, got {nodes_on_machine}")
    cores = total_cores if total_cores is not None else available_cores()
    return max(1, cores // (nodes_on_machine * workers))


def apply_thread_budget(threads: int) -> int:
    """Set torch's intra-op thread count (process-wide) and return it.

    torch keeps one pool per process, so this is a ceiling for all workers of the
    node; call it once at start-up with `thread_budget(...)`.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    try:
        # Inter-op threads can only be set before torch starts its pool.
        torch.set_num_interop_threads(min(threads, 2))
    except RuntimeError:
        pass
    return threads


def own_openmp_team(threads: int) -> None:
    """Make the calling thread run torch's parallel ops with ``threads`` OpenMP threads.

    Why: libgomp (torch's OpenMP on Linux) gives every thread that runs a parallel op a
    team of pool threads that lives as long as that thread, and once the process holds
    more OpenMP threads than CPUs it throttles every team's spin-wait (about 100 spins,
    then a futex sleep). A decode step runs about 120 short parallel regions per token, so
    a throttled team sleeps and wakes that often: batch-1 decode measured 2-3x slower
    (docs/benchmarks.md, "Targets of issue 17"). So a process keeps one long-lived team
    per LLM engine worker, sized by the thread budget, and its other torch threads (the
    daemon's embedding worker) run with one thread, which makes no team.

    torch copies its process-wide count into a thread at that thread's first parallel op;
    asking for the count first makes that happen now, so the count set next sticks to this
    thread. The process-wide count becomes ``threads`` too (threads that start later take
    it as their default).
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.get_num_threads()
    torch.set_num_threads(threads)


def on_passing_thread(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Run ``fn`` on a new thread, wait for it, and return its result or raise its error.

    Why: loading weights and allocating the KV cache run parallel torch ops, and the
    thread that runs them keeps an OpenMP team for as long as it lives (see
    ``own_openmp_team``). Done on a thread that then exits, they leave no idle team in
    the caller (often the main thread, which lives as long as the process) to throttle
    the engine worker's team.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            box["error"] = e

    t = threading.Thread(target=run, name=f"passing-{getattr(fn, '__name__', 'fn')}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["result"]
