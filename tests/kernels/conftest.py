"""Kernel tests run the Triton kernels on CPU through the interpreter.

TRITON_INTERPRET must be set before `kernels.triton_ops` is imported (triton picks the
interpreter when the @triton.jit decorators run), so it is set here at collection time.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tops():
    """The Triton op module, or skip when triton is not installed."""
    pytest.importorskip("triton")
    from kernels import triton_ops

    return triton_ops


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
