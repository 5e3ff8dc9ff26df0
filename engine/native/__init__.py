"""Native CPU kernels, built on first use with the system C++ compiler.

torch has no CPU op that reads a paged KV cache in place: the engine's torch path
gathers every sequence's blocks into a dense copy and runs SDPA, per layer per step,
which was about a quarter of a 32-sequence decode step. `paged_attention.cpp` reads the
blocks directly (2-3x faster per layer, `scripts/bench_attention.py`). It is a plain C
function (no torch headers), compiled in ~1 s with `-O3 -march=native` into the user
cache directory, keyed by the source, the flags and this CPU, under a file lock so
concurrent nodes build it once; loaded with ctypes, which releases the GIL during the
call.

`quant_gemm.cpp` (quantized-weight GEMM, engine.quant) is built the same way but
without -march=native: its SIMD paths are chosen at run time from the CPU's flags.
`decode_step.cpp` (engine.fused_decode) includes both sources and runs a quantized
model's whole decode step in one call; its cache key covers the included files too.

The cache is `$RAKIS_NATIVE_CACHE` when set. Anything missing (no compiler, an
unwritable cache, a failed build, `RAKIS_NATIVE=0`) leaves `load()`
returning None and the engine on its torch path: slower, same results.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import platformdirs
import structlog

from engine.config import env_switches

log = structlog.get_logger(__name__)

SOURCE = Path(__file__).with_name("paged_attention.cpp")
CFLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC", "-std=c++17")

_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}


def enabled() -> bool:
    return env_switches().native


def _cpu_id() -> str:
    """This CPU's model and feature flags: -march=native code must not move hosts."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags"))][:2]
    return "\n".join(keep)


def _compiler() -> str | None:
    return env_switches().cxx or shutil.which("g++") or shutil.which("c++")


def cache_dir() -> Path:
    """Where built kernels live; RAKIS_NATIVE_CACHE overrides (services without a home)."""
    override = env_switches().native_cache
    return override if override is not None else Path(platformdirs.user_cache_dir("rakis")) / "native"


def _build(cxx: str, out: Path, source: Path = SOURCE, cflags: tuple[str, ...] = CFLAGS) -> None:
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run(
            [cxx, *cflags, str(source), "-o", tmp], capture_output=True, text=True, timeout=120
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{cxx} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    fn = lib.rakis_paged_decode_f32
    fn.argtypes = (
        [ctypes.c_void_p] * 6 + [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_int, ctypes.c_longlong]
    )
    fn.restype = None
    win = lib.rakis_paged_decode_window_f32  # the same plus a trailing sliding window (0 = none)
    win.argtypes = [*fn.argtypes, ctypes.c_int]
    win.restype = None
    return lib


def load() -> ctypes.CDLL | None:
    """The native paged-attention library, built if needed; None when it cannot be had here."""
    return load_library(SOURCE, CFLAGS, _declare, "rakis_native")


def load_library(
    source: Path, cflags: tuple[str, ...], declare, prefix: str, includes: tuple[Path, ...] = ()
) -> ctypes.CDLL | None:
    """Build `source` with `cflags` once per (source and the `includes` it pulls in,
    flags, compiler, CPU), load it and let `declare` set its ctypes signatures; None
    (with a warning) when it cannot be had."""
    if not enabled():
        return None
    cxx = _compiler()
    texts = [f.read_text() for f in (source, *includes)]
    key_src = "\n".join([*texts, " ".join(cflags), str(cxx), _cpu_id()])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    with _lock:
        if key in _loaded:
            return _loaded[key]
        lib = None
        if cxx is None:
            log.warning(
                "native_kernels_unavailable", reason="no C++ compiler (install g++)", fallback="torch ops"
            )
        else:
            out = cache_dir() / f"{prefix}-{key}.so"
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                with (out.parent / f"{key}.lock").open("a+") as lock:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
                    if not out.exists():
                        _build(cxx, out, source, cflags)
                lib = declare(ctypes.CDLL(str(out)))
            except Exception as e:  # a missing fast path must never stop the engine
                log.warning("native_kernels_unavailable", reason=str(e), fallback="torch ops")
                lib = None
        _loaded[key] = lib
        return lib
