"""engine.quant: the native Q4_1 / Q8_0 GEMM equals the dequantized reference on every
SIMD path this CPU has, the block formats round-trip, the GGUF's own blocks (rows
un-permuted) encode exactly the weights transformers loads, and a quantized runner
stays close to fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import native, quant
from engine.linear import Linear

needs_kernel = pytest.mark.skipif(quant.load() is None, reason="native quant kernel cannot be built here")


def _quantized_activations(x: torch.Tensor) -> torch.Tensor:
    """What the kernel multiplies by: x in int8 blocks of 32 with an fp32 scale each."""
    xb = x.float().reshape(x.shape[0], -1, 32)
    d = xb.abs().amax(2, keepdim=True) / 127
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    return (torch.round(xb * inv) * d).reshape(x.shape)


def _reference(wtype, blocks, x, bias):
    w = quant.dequantize(wtype, blocks, x.shape[1]).double()
    y = _quantized_activations(x).double() @ w.T
    return y if bias is None else y + bias.double()


@pytest.fixture(params=[0, 1, 2], ids=["scalar", "avx2", "avx512-vnni"])
def isa(request):
    lib = quant.load()
    if lib is None:
        pytest.skip("no native kernel")
    best = (lib.rakis_quant_force_isa(-1), lib.rakis_quant_isa())[1]
    if request.param > best:
        pytest.skip(f"this CPU lacks {quant.ISA_NAMES[request.param]}")
    lib.rakis_quant_force_isa(request.param)
    assert lib.rakis_quant_isa() == request.param
    yield request.param
    lib.rakis_quant_force_isa(-1)


@needs_kernel
@pytest.mark.parametrize("mode,wtype", [("q4", quant.Q4_1), ("int8", quant.Q8_0)])
@pytest.mark.parametrize("rows", [1, 3, 4, 5, 7, 16, 32, 33])
@pytest.mark.parametrize("n", [72, 70])
def test_kernel_matches_dequantized_reference(isa, mode, wtype, rows, n):
    """Every row count takes its own loop. n = 72 runs the 8-row interleaved kernels
    (tiles of up to four / two activation rows, with partial last tiles; on VNNI four
    512-bit passes of two groups and one single group, Q4_1 from 4 rows and Q8_0 from
    16); n = 70 has no
    whole groups of eight, so the plain kernels run (four weight rows per pass below
    four activation rows, four activation rows per pass at and above, and chunks
    whose rows are not a multiple of four)."""
    g = torch.Generator().manual_seed(rows)
    k = 160
    w = torch.randn(n, k, generator=g)
    bias = torch.randn(n, generator=g)
    lin = quant.quantize_linear(mode, w, bias)
    assert isinstance(lin, quant.QuantLinear) and lin.wtype == wtype
    assert lin.kernel_wtype == (quant.INTERLEAVED[wtype] if n % 8 == 0 else wtype)
    x = torch.randn(rows, k + 32, generator=g)[:, 16 : 16 + k]  # a strided view, like q/k/v slices
    y = lin(x)
    ref = _reference(wtype, lin.blocks, x.contiguous(), bias)
    assert y.shape == (rows, n) and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-4)


@needs_kernel
def test_all_paths_agree_on_a_model_shape():
    lib = quant.load()
    g = torch.Generator().manual_seed(1)
    w = torch.randn(96, 576, generator=g) * 0.05
    x = torch.randn(5, 576, generator=g)
    lin = quant.quantize_linear("q4", w)
    outs = []
    try:
        for i in range(3):
            lib.rakis_quant_force_isa(i)
            outs.append(lin(x))
    finally:
        lib.rakis_quant_force_isa(-1)
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=1e-5, atol=1e-5)


@needs_kernel
def test_activation_quantization_is_the_same_on_every_path():
    """The SIMD quantize_row rounds exactly as the scalar one (ties to even, zero blocks)."""
    lib = quant.load()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 1536, generator=g) * torch.logspace(-6, 4, 6)[:, None]
    x[0, :32] = 0
    x[1, 32:64] = torch.arange(32) % 3 * 0.5  # halves land on rounding ties
    got = []
    try:
        for i in range(3):
            lib.rakis_quant_force_isa(i)
            if lib.rakis_quant_isa() != i:
                continue
            qs = torch.empty(6, 1536, dtype=torch.int8)
            d, s = torch.empty(6, 48), torch.empty(6, 48)
            lib.rakis_quantize_rows(x.data_ptr(), 6, 1536, qs.data_ptr(), d.data_ptr(), s.data_ptr())
            got.append((qs, d, s))
    finally:
        lib.rakis_quant_force_isa(-1)
    xb = x.reshape(6, 48, 32)
    db = xb.abs().amax(2, keepdim=True) / 127
    inv = torch.where(db > 0, 1 / db, torch.zeros_like(db))  # the kernel's x * (1 / d)
    torch.testing.assert_close(got[0][0].float(), torch.round(xb * inv).reshape(6, 1536), rtol=0, atol=0)
    for qs, d, s in got[1:]:
        assert torch.equal(qs, got[0][0]) and torch.equal(d, got[0][1]) and torch.equal(s, got[0][2])


def test_block_formats_round_trip():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(8, 128, generator=g)
    q8 = quant.quantize_q8_0(w)
    assert q8.shape == (8, 4 * 34)
    err8 = (quant.dequantize(quant.Q8_0, q8, 128) - w).abs()
    step8 = w.reshape(8, 4, 32).abs().amax(2, keepdim=True) / 127
    assert (err8.reshape(8, 4, 32) <= step8 * 0.51 + 1e-3).all()
    q4 = quant.quantize_q4_1(w)
    assert q4.shape == (8, 4 * 20)
    wb = w.reshape(8, 4, 32)
    step4 = (wb.amax(2, keepdim=True) - wb.amin(2, keepdim=True)) / 15
    err4 = (quant.dequantize(quant.Q4_1, q4, 128) - w).abs().reshape(8, 4, 32)
    assert (err4 <= step4 * 0.51 + 2e-3).all()


@pytest.mark.parametrize(
    "wtype,quantize", [(quant.Q4_1, quant.quantize_q4_1), (quant.Q8_0, quant.quantize_q8_0)]
)
def test_interleave8_round_trips_and_places_rows(wtype, quantize):
    """The 8-row layout holds the same bytes: scales of rows 0..7, then chunks of four
    quant bytes of each row; deinterleave8 restores the plain blocks exactly."""
    g = torch.Generator().manual_seed(4)
    blocks = quantize(torch.randn(24, 96, generator=g))
    packed = quant.interleave8(wtype, blocks)
    bb = quant.BLOCK_BYTES[wtype]
    assert packed.shape == (3, 3 * 8 * bb) and packed.dtype == np.uint8
    np.testing.assert_array_equal(quant.deinterleave8(wtype, packed), blocks)
    # group 1, block 2: row 5's d, then its quant bytes 4..7 in chunk 1
    grp = packed[1].reshape(3, 8 * bb)[2]
    row = blocks[8 + 5].reshape(3, bb)[2]
    sb = 4 if wtype == quant.Q4_1 else 2
    np.testing.assert_array_equal(grp[5 * 2 : 5 * 2 + 2], row[0:2])
    np.testing.assert_array_equal(grp[8 * sb + 32 + 5 * 4 : 8 * sb + 32 + 5 * 4 + 4], row[sb + 4 : sb + 8])
    with pytest.raises(ValueError):
        quant.interleave8(wtype, blocks[:20])


@needs_kernel
def test_quant_linear_keeps_only_the_interleaved_copy():
    w = torch.randn(16, 64)
    lin = quant.quantize_linear("q4", w)
    assert lin.kernel_wtype == quant.Q4_1X8 and lin.wtype == quant.Q4_1
    assert lin.kernel_blocks.shape == (2, 2 * 160) and lin.nbytes == 16 * 2 * 20
    np.testing.assert_array_equal(lin.blocks.numpy(), quant.quantize_q4_1(w))


def test_q4_0_becomes_q4_1_exactly():
    rng = np.random.default_rng(3)
    n, nb = 4, 3
    d = rng.standard_normal((n, nb, 1)).astype(np.float16)
    qs = rng.integers(0, 256, (n, nb, 16), dtype=np.uint8)
    q40 = np.concatenate([d.view(np.uint8), qs], axis=2).reshape(n, nb * 18)
    q = np.concatenate([qs & 15, qs >> 4], axis=2).astype(np.float32)
    expect = (d.astype(np.float32) * (q - 8)).reshape(n, nb * 32)
    got = quant.dequantize(quant.Q4_1, quant.q4_0_to_q4_1(q40), nb * 32).numpy()
    np.testing.assert_allclose(got, expect, rtol=0, atol=1e-6 * np.abs(expect).max())


def test_bad_modes_and_inputs_are_refused():
    with pytest.raises(ValueError, match="unknown weight quantization"):
        quant.resolve_weight_mode("int3")
    assert quant.resolve_weight_mode("none") is None
    assert quant.resolve_weight_mode("Q4") == "q4"
    with pytest.raises(ValueError, match="multiple of 32"):
        quant.quantize_linear("int8", torch.zeros(4, 40))


@needs_kernel
def test_wrong_activation_dtype_is_refused():
    lin = quant.quantize_linear("int8", torch.randn(8, 64))
    with pytest.raises(ValueError, match="fp32"):
        lin(torch.randn(2, 64, dtype=torch.bfloat16))
    assert lin(torch.zeros(0, 64)).shape == (0, 8)


def test_without_a_compiler_it_falls_back_to_fp32(monkeypatch):
    monkeypatch.setattr(quant, "load", lambda: None)
    w = torch.randn(16, 64)
    lin = quant.quantize_linear("int8", w)
    assert isinstance(lin, Linear)
    x = torch.randn(3, 64)
    torch.testing.assert_close(lin(x), x @ quant.dequantize(quant.Q8_0, quant.quantize_q8_0(w), 64).T)


def test_the_build_is_portable():
    assert "-march=native" not in quant.CFLAGS
    assert native.load_library.__doc__


# ------------------------------------------------------------------ the real model


@pytest.fixture(scope="module")
def smol_files():
    from safetensors.torch import load_file

    from engine.model_files import default_llm_dir, smollm2_gguf_path

    d = default_llm_dir()
    return smollm2_gguf_path(), load_file(str(d / "model.safetensors")), d


@pytest.mark.slow
def test_gguf_blocks_encode_the_loaded_weights(smol_files):
    gguf, state, d = smol_files
    assert quant.gguf_source(d) == gguf
    blocks = quant.gguf_quant_weights(gguf, num_heads=9, num_kv_heads=3)
    names = {
        "blk.0.attn_q": "model.layers.0.self_attn.q_proj.weight",
        "blk.0.attn_k": "model.layers.0.self_attn.k_proj.weight",
        "blk.0.attn_v": "model.layers.0.self_attn.v_proj.weight",
        "blk.29.attn_q": "model.layers.29.self_attn.q_proj.weight",
        "blk.7.ffn_down": "model.layers.7.mlp.down_proj.weight",
        "output": "lm_head.weight",
    }
    for gname, hname in names.items():
        wtype, b = blocks[gname]
        w = state[hname]
        assert wtype == (quant.Q8_0 if gname == "output" else quant.Q4_1)
        torch.testing.assert_close(quant.dequantize(wtype, b, w.shape[1]), w, rtol=1e-3, atol=1e-6)
    assert len(blocks) == 30 * 7 + 1


@pytest.mark.slow
@needs_kernel
@pytest.mark.parametrize("mode", ["int8", "q4"])
def test_quantized_runner_stays_close_to_fp32(smol_files, mode):
    from engine.model import LlamaRunner

    _, _, d = smol_files
    ref = LlamaRunner(d, quant="none")
    qr = LlamaRunner(d, quant=mode)
    assert qr.quant == mode and isinstance(qr.layers[0].gate_up, quant.QuantLinear)
    if mode == "q4":  # the file's own blocks: 4-bit layers, 8-bit head, as shipped
        assert qr.layers[0].qkv.wtype == quant.Q4_1 and qr.lm_head.wtype == quant.Q8_0
    x = torch.randn(3, ref.hidden_size, generator=torch.Generator().manual_seed(0))
    for a, b in ((ref.layers[3].gate_up, qr.layers[3].gate_up), (ref.lm_head, qr.lm_head)):
        ya, yb = a(x), b(x)
        rel = (ya - yb).norm() / ya.norm()
        assert rel < (0.02 if mode == "q4" else 0.05), rel


def test_runner_refuses_quant_off_cpu_fp32(tiny_dir):
    from engine.model import LlamaRunner

    with pytest.raises(ValueError, match="float32 compute only"):
        LlamaRunner(tiny_dir, dtype=torch.bfloat16, quant="int8")


@needs_kernel
@pytest.mark.parametrize("mode", ["int8", "q4"])
def test_engine_runs_quantized_from_the_environment(make_engine, monkeypatch, mode):
    """RAKIS_QUANT reaches the runner through EngineCore unchanged, and a quantized engine
    serves a batch (prefill + decode through QuantLinear) like the fp32 one does."""
    from engine.core import GenerationRequest, SamplingParams

    monkeypatch.setenv(quant.ENV_QUANT, mode)
    eng = make_engine()
    assert eng.runner.quant == mode and isinstance(eng.runner.layers[0].qkv, quant.QuantLinear)
    reqs = [
        GenerationRequest(f"r{i}", SamplingParams(max_tokens=6, ignore_eos=True), prompt=p)
        for i, p in enumerate(["Hello there", "One two three four five six seven"])
    ]
    res = eng.generate(reqs)
    assert [len(r.token_ids) for r in res] == [6, 6]


def test_split_model_dtype():
    assert quant.split_model_dtype("q4") == ("float32", "q4")
    assert quant.split_model_dtype("INT8") == ("float32", "int8")
    assert quant.split_model_dtype("bf16") == ("bf16", "none")
    assert quant.split_model_dtype(None) == (None, None)
