"""Compile every Triton kernel to a CUDA cubin without a GPU (run as a subprocess).

The CPU interpreter checks numerics but not what only the GPU compiler enforces (tl.dot
minimum tile sizes, early returns, dynamic loop bounds, dtype rules). triton ships ptxas,
so the kernels can be lowered all the way to sm_90 machine code here. It must run in a
process without TRITON_INTERPRET, whence `python -m tests.engine.kernels.aot_compile`.
Prints one line per kernel variant; exits non-zero on the first compile error.
"""

from __future__ import annotations

import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from engine.kernels import triton_ops as T  # noqa: E402

ATTN_INTS = "stride_qt stride_qh stride_ot stride_oh stride_kb stride_ks stride_kh stride_vb stride_vs stride_vh stride_bt block_size"
_compiled = 0
STORE_INTS = "stride_kt stride_kh stride_vt stride_vh stride_kcb stride_kcs stride_kch stride_vcb stride_vcs stride_vch block_size"


def _compile(target: GPUTarget, fn, sig: dict[str, str], consts: dict) -> None:
    full = {name: sig.get(name, "constexpr") for name in fn.arg_names}
    kernel = triton.compile(ASTSource(fn, full, consts), target=target)
    assert kernel.asm.get("cubin"), "no cubin produced"
    global _compiled
    _compiled += 1
    print(
        f"ok {target.arch} {fn.__name__} {sig.get('Q', sig.get('X', sig.get('K', sig.get('OUT'))))} {consts}"
    )


# (decode, group, split) attention variants compiled per dtype. bf16 is the engine's CUDA
# dtype and gets every kernel; fp16 and fp32 only the attention paths whose code differs
# (tensor-core fp16 operands, fp32 "ieee" dots), to keep this test to ~20 s.
ATTN_VARIANTS = {
    "bf16": ((True, 3, False), (True, 3, True), (True, 1, True), (False, 3, False)),
    "fp16": ((True, 3, True), (False, 3, False)),
    "fp32": ((True, 3, False),),
}
EXPECTED_COMPILES = sum(len(v) for v in ATTN_VARIANTS.values()) + 5  # + reduce, store, 2 norms, rotary


def main(arch: int) -> None:
    target = GPUTarget("cuda", arch, 32)
    for dt, variants in ATTN_VARIANTS.items():
        p = "*" + dt
        attn = dict(Q=p, K=p, V=p, OUT=p, BT="*i32", SL="*i32", CU="*i32", scale_log2="fp32")
        attn |= dict(M_PART="*fp32", L_PART="*fp32", ACC_PART="*fp32")
        attn |= {s: "i32" for s in ATTN_INTS.split()}
        for decode, group, split in variants:
            consts = dict(HEAD_DIM=64, BLOCK_D=64, GROUP=group, BLOCK_M=16 if decode else 64, BLOCK_N=64)
            consts |= dict(IS_DECODE=decode, DOT_PRECISION="ieee" if dt == "fp32" else None, UPCAST_DOT=False)
            consts |= dict(SPLIT=split, PARTITION=T.DECODE_PARTITION)
            _compile(target, T._paged_attention_kernel, attn, consts)
        if dt != "bf16":
            continue
        reduce = dict(
            OUT=p, M_PART="*fp32", L_PART="*fp32", ACC_PART="*fp32", stride_ot="i32", stride_oh="i32"
        )
        reduce |= dict(num_splits="i32")
        _compile(target, T._split_reduce_kernel, reduce, dict(HEAD_DIM=64, BLOCK_D=64, GROUP=3, BLOCK_M=16))
        store = dict(K=p, V=p, KC=p, VC=p, SLOTS="*i64") | {s: "i32" for s in STORE_INTS.split()}
        _compile(target, T._store_kv_kernel, store, dict(NUM_HEADS=3, HEAD_DIM=64, BLOCK_H=4, BLOCK_D=64))
        norm = dict(X=p, R=p, W=p, OUT=p, NEW_R=p, stride_x="i32", stride_r="i32", n_cols="i32", eps="fp32")
        for res in (False, True):
            _compile(target, T._rms_norm_kernel, norm, dict(HAS_RESIDUAL=res, BLOCK=1024))
        rot = dict(Q=p, K=p, POS="*i64", COS="*fp32", SIN="*fp32")
        rot |= {s: "i32" for s in ("stride_qt", "stride_qh", "stride_kt", "stride_kh", "stride_cos")}
        consts = dict(HQ=9, HKV=3, HALF=32, BLOCK_HQ=16, BLOCK_HKV=4, BLOCK_HALF=32)
        _compile(target, T._rotary_kernel, rot, consts)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 90)
    if _compiled != EXPECTED_COMPILES:
        sys.exit(f"compiled {_compiled} variants, expected {EXPECTED_COMPILES}")
    print(f"all kernel variants compiled ({_compiled})")
