"""llama.cpp's `llama-server` as a peer under bench_engine.py's load (issue 17).

`run_llama_cpp_peer(URL_OR_AUTO, ...)` sends the same mixed chat requests concurrently
to `/v1/chat/completions` (temperature 0, each request's max_tokens), counts useful
tokens from each response's usage, then measures batch-1 decode from the server's own
timings over sequential requests with `ignore_eos`.

AUTO builds llama.cpp once into the cache (`$RAKIS_LLAMA_CPP_CACHE`, default
~/.cache/rakis/llama.cpp) from the sources vendored in the `llama-cpp-python` 0.3.36
sdist (pip download --no-binary), with `-DGGML_NATIVE=OFF` and the x86 SIMD levels
turned on explicitly from /proc/cpuinfo (a native build hit an illegal instruction on
one machine), AMX off; then starts `llama-server -t THREADS -np 32 -c 32768` on the
same GGUF the engine loads. Without cmake or a C++ compiler, or when the download or
build fails, the step is skipped with a message: it is an optional benchmark step.

    .venv/bin/python scripts/bench_engine.py --llama-cpp AUTO
    .venv/bin/python scripts/bench_engine.py --llama-cpp http://127.0.0.1:8080
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SDIST = "llama-cpp-python==0.3.36"
TARGETS = ("llama-server", "llama-batched-bench")


def cache_dir() -> Path:
    env = os.environ.get("RAKIS_LLAMA_CPP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "rakis" / "llama.cpp"


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cmake_simd_flags(flags: set[str]) -> list[str]:
    """GGML's x86 options from the CPU's flags (GGML_NATIVE=OFF; nothing guessed)."""
    on = lambda cond: "ON" if cond else "OFF"  # noqa: E731
    return [
        "-DGGML_NATIVE=OFF",
        f"-DGGML_AVX={on('avx' in flags)}",
        f"-DGGML_AVX2={on('avx2' in flags)}",
        f"-DGGML_FMA={on('fma' in flags)}",
        f"-DGGML_F16C={on('f16c' in flags)}",
        f"-DGGML_BMI2={on('bmi2' in flags)}",
        f"-DGGML_AVX512={on('avx512f' in flags)}",
        f"-DGGML_AVX512_VBMI={on('avx512vbmi' in flags)}",
        f"-DGGML_AVX512_VNNI={on('avx512_vnni' in flags)}",
        f"-DGGML_AVX512_BF16={on('avx512_bf16' in flags)}",
        f"-DGGML_AVX_VNNI={on('avx_vnni' in flags)}",
        "-DGGML_AMX_TILE=OFF",
        "-DGGML_AMX_INT8=OFF",
        "-DGGML_AMX_BF16=OFF",
        "-DLLAMA_CURL=OFF",
        "-DCMAKE_BUILD_TYPE=Release",
    ]


def build_llama_cpp(log=print) -> Path | None:
    """Path of a built llama-server (cached), or None with the reason logged."""
    root = cache_dir()
    flags = cmake_simd_flags(_cpu_flags())
    key = hashlib.sha256(" ".join([SDIST, *flags]).encode()).hexdigest()[:12]
    server = root / f"build-{key}" / "bin" / "llama-server"
    if server.is_file():
        return server
    if not (shutil.which("cmake") and (shutil.which("c++") or shutil.which("g++"))):
        log("llama.cpp: skipped (no cmake or C++ compiler on this machine)")
        return None
    root.mkdir(parents=True, exist_ok=True)
    try:
        src = next(root.glob("llama_cpp_python-*/vendor/llama.cpp"), None)
        if src is None:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--no-binary",
                    "llama-cpp-python",  # only this package from source; build tools as wheels
                    SDIST,
                    "-d",
                    str(root),
                ],
                check=True,
                capture_output=True,
                text=True,
                timeout=600,
            )
            tgz = next(root.glob("llama_cpp_python-*.tar.gz"))
            with tarfile.open(tgz) as tf:
                tf.extractall(root, filter="data")
            src = next(root.glob("llama_cpp_python-*/vendor/llama.cpp"))
        build = server.parent.parent
        log(f"llama.cpp: building {', '.join(TARGETS)} in {build} (several minutes)")
        subprocess.run(
            ["cmake", "-S", str(src), "-B", str(build), *flags], check=True, capture_output=True, text=True
        )
        subprocess.run(
            [
                "nice",
                "-n",
                "10",
                "cmake",
                "--build",
                str(build),
                "--target",
                *TARGETS,
                "-j",
                str(os.cpu_count() or 2),
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=3600,
        )
    except (subprocess.SubprocessError, OSError, StopIteration) as e:
        detail = getattr(e, "stderr", "") or ""
        log(f"llama.cpp: skipped (build failed: {e} {detail[-500:]})")
        return None
    return server if server.is_file() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float = 900) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _wait_healthy(base: str, proc: subprocess.Popen | None, timeout: float = 120) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError("llama-server did not become healthy")


def run_llama_cpp_peer(
    url_or_auto: str, rounds_items, *, threads: int, batch1_tokens: int, eos=None, gguf: Path | None = None
) -> dict:
    """Mixed-workload throughput and batch-1 decode of a llama-server ({"skipped": why} when unavailable)."""
    proc = None
    if url_or_auto.upper() == "AUTO":
        server = build_llama_cpp()
        if server is None:
            return {"skipped": "no llama.cpp build (see message above)"}
        if gguf is None:
            from engine.model_files import smollm2_gguf_path

            gguf = smollm2_gguf_path()
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen(
            [
                str(server),
                "-m",
                str(gguf),
                "-t",
                str(threads),
                "-np",
                "32",
                "-c",
                "32768",
                "--port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    else:
        base = url_or_auto.rstrip("/")
    try:
        _wait_healthy(base, proc)
        url = base + "/v1/chat/completions"

        def one(item):
            msgs, mt = item
            r = _post(url, {"messages": msgs, "max_tokens": mt, "temperature": 0})
            return r["usage"]["completion_tokens"]

        _post(url, {"messages": rounds_items[0][0][0], "max_tokens": 8, "temperature": 0})  # warm-up
        tokens, seconds = 0, 0.0
        for items in rounds_items:
            t0 = time.perf_counter()
            with ThreadPoolExecutor(len(items)) as ex:
                tokens += sum(ex.map(one, items))
            seconds += time.perf_counter() - t0
        rates = []
        for _ in range(4):
            r = _post(
                base + "/completion",
                {
                    "prompt": "Once upon a time, in a",
                    "n_predict": batch1_tokens,
                    "temperature": 0,
                    "ignore_eos": True,
                },
            )
            rates.append(r["timings"]["predicted_per_second"])
        return {
            "tok_s": tokens / seconds,
            "tokens": tokens,
            "seconds": seconds,
            "batch1_tok_s": sorted(rates)[len(rates) // 2],
        }
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        return {"skipped": f"llama-server at {base} failed: {e}"}
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
