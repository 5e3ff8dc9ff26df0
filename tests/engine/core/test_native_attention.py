"""engine.native: the C++ paged decode attention equals the torch path, is built once,
and anything it cannot take (or cannot build) falls back to torch instead of failing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import native
from engine.attention import cpu_ops, paged_attention_decode

REPO = Path(__file__).resolve().parents[2]

needs_compiler = pytest.mark.skipif(native._compiler() is None, reason="no C++ compiler on this machine")


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """A private build cache so these tests build (and break) their own copy."""
    monkeypatch.setattr(native, "cache_dir", lambda: tmp_path / "native")
    monkeypatch.setattr(native, "_loaded", {})
    return tmp_path / "native"


def _case(b, ctx, hq, hkv, d, *, bs=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    nblocks = b * -(-ctx // bs) + 20
    kc = torch.randn(nblocks, bs, hkv, d, generator=g).to(dtype)
    vc = torch.randn(nblocks, bs, hkv, d, generator=g).to(dtype)
    nb = -(-ctx // bs)
    tables = torch.randperm(nblocks, generator=g)[: b * nb].to(torch.int32).reshape(b, nb)
    lens = torch.randint(1, ctx + 1, (b,), generator=g, dtype=torch.int32)
    lens[0] = ctx
    # q as the model makes it: a strided view into a fused q/k/v projection
    qkv = torch.randn(b, (hq + 2 * hkv) * d, generator=g).to(dtype)
    q = qkv[:, : hq * d].reshape(b, hq, d)
    return q, kc, vc, tables, lens


@needs_compiler
@pytest.mark.parametrize(
    "b,ctx,hq,hkv,d",
    [(1, 1, 9, 3, 64), (1, 37, 9, 3, 64), (2, 64, 4, 4, 32), (8, 100, 8, 2, 16), (33, 150, 9, 3, 64)],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_native_matches_torch_path(fresh_cache, b, ctx, hq, hkv, d, threads):
    ops = cpu_ops()
    assert ops.paged_attention_decode.__name__ == "paged_attention_decode_native"
    q, kc, vc, tables, lens = _case(b, ctx, hq, hkv, d, seed=b * 1000 + ctx)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = ops.paged_attention_decode(q, kc, vc, tables, lens, d**-0.5)
    finally:
        torch.set_num_threads(before)
    want = paged_attention_decode(q, kc, vc, tables, lens, d**-0.5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)


@needs_compiler
def test_unsupported_inputs_take_the_torch_path(fresh_cache):
    ops = cpu_ops()
    q, kc, vc, tables, lens = _case(3, 40, 9, 3, 64, dtype=torch.bfloat16)
    got = ops.paged_attention_decode(q, kc, vc, tables, lens, 0.125)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, paged_attention_decode(q, kc, vc, tables, lens, 0.125))
    # a block id past the cache is never handed to the kernel: the torch path raises
    q, kc, vc, tables, lens = _case(2, 40, 9, 3, 64)
    tables[1, 0] = kc.shape[0] + 5
    with pytest.raises((IndexError, RuntimeError)):
        ops.paged_attention_decode(q, kc, vc, tables, lens, 0.125)


def test_disabled_by_env(fresh_cache, monkeypatch):
    monkeypatch.setenv("RAKIS_NATIVE", "0")
    assert native.load() is None
    assert cpu_ops().paged_attention_decode is paged_attention_decode
    assert not fresh_cache.exists()


def test_failed_build_falls_back(fresh_cache, monkeypatch):
    from structlog.testing import capture_logs

    monkeypatch.setenv("CXX", "/bin/false")
    with capture_logs() as logs:
        assert native.load() is None
    assert [e["event"] for e in logs] == ["native_kernels_unavailable"]
    assert logs[0]["log_level"] == "warning" and logs[0]["fallback"] == "torch ops"
    assert cpu_ops().paged_attention_decode is paged_attention_decode
    assert not list(fresh_cache.glob("*.so"))


@needs_compiler
def test_concurrent_processes_build_once(tmp_path):
    """Nodes of a local testnet start together: one builds, the others wait and load."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    code = "from engine import native; import sys; sys.exit(0 if native.load() is not None else 1)"
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env) for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    built = list((tmp_path / "rakis" / "native").glob("*.so"))
    assert len(built) == 1
    assert not list((tmp_path / "rakis" / "native").glob("tmp*"))


@needs_compiler
def test_cache_dir_from_env(tmp_path, monkeypatch):
    """A service without a writable home (systemd ProtectHome) points the cache elsewhere."""
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setenv("RAKIS_NATIVE_CACHE", str(tmp_path / "native"))
    assert native.load() is not None
    assert len(list((tmp_path / "native").glob("rakis_native-*.so"))) == 1
