"""Kernel tests: the Triton kernels against their torch references.

Without a GPU the kernels run on CPU through the Triton interpreter. TRITON_INTERPRET must
be set before `kernels.triton_ops` is imported (triton picks the interpreter when the
@triton.jit decorators run), so it is set here at collection time, and only when there is
no GPU: on a CUDA machine the same tests run the compiled kernels on the GPU (inputs are
built on CPU and moved per call by `_OnDevice`), and the engine's own CUDA tests are not
slowed down by an interpreter.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

torch.set_num_threads(1)

KERNEL_DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") else "cuda"


class _OnDevice:
    """The triton_ops module with every op called on KERNEL_DEVICE.

    Tensor arguments are copied to the device, the op runs, the (possibly updated in place)
    device copies are written back into the caller's CPU tensors, and results come back
    to CPU: tests keep writing CPU code and still exercise the compiled GPU kernels.
    Patch tunables on the module itself, not on this proxy.
    """

    def __init__(self, module, device: str) -> None:
        self._module = module
        self._device = torch.device(device)

    def __getattr__(self, name: str):
        attr = getattr(self._module, name)
        if name.startswith("_") or not callable(attr) or isinstance(attr, type):
            return attr

        def call(*args, **kwargs):
            moved = [a.to(self._device, copy=True) if isinstance(a, torch.Tensor) else a for a in args]
            kw = {
                k: v.to(self._device, copy=True) if isinstance(v, torch.Tensor) else v
                for k, v in kwargs.items()
            }
            out = attr(*moved, **kw)
            if isinstance(out, torch.Tensor):
                out = out.cpu()
            elif isinstance(out, tuple):
                out = tuple(o.cpu() if isinstance(o, torch.Tensor) else o for o in out)
            for a, m in zip(args, moved, strict=True):
                if isinstance(a, torch.Tensor) and m is not a:
                    a.copy_(m)
            return out

        call.__name__ = name
        return call


@pytest.fixture(scope="session")
def tops():
    """The Triton op module (interpreted on CPU, compiled on a GPU), or skip without triton."""
    pytest.importorskip("triton")
    from engine.kernels import triton_ops

    return triton_ops if KERNEL_DEVICE == "cpu" else _OnDevice(triton_ops, KERNEL_DEVICE)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
