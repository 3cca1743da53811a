"""Which implementation each minipt op runs on CUDA, decided here only: its Triton kernel, or torch's own
computation of the same thing where that is measured faster on this GPU for this shape.

Every op has both (``_register.register_op``): the Triton kernel, and torch's kernels for what the kernel
fuses (the op's ``aten`` implementation where it has one, such as ``F.layer_norm``'s backward, else its
plain-torch reference, which runs as torch's kernels one after another). A fused kernel saves memory
traffic and launches; torch's kernels may still win where they are tuned for the GPU and the shape (a
wide row, a large batch) or where the Triton kernel's block sizes fit the shape badly.

The first call of an op on a shape class (each dimension rounded up to a power of two, the dtypes, the
flags) times both on that call's own inputs, alternated, five calls each after a warm-up, with the device
synchronised around each; Triton keeps the op unless torch's kernels are faster by more than 5%. The
answer is kept for the process. No timing happens while a CUDA graph is being captured, or for inputs
that torch's version would need too much memory for (``torch_takes``: attention's reference
materialises the (T, S) scores): there, and for float64 (which the kernels do not take), the choice is
fixed. ``MINIPT_CUDA_KERNELS=triton`` or ``=torch`` fixes it for every op and shape instead.

    from minipt.ops import cuda
    cuda.choices()     # {("layer_norm", shape class): "triton" | "torch", ...}: what was measured so far
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import torch

from ._timing import faster

KERNELS_ENV = "MINIPT_CUDA_KERNELS"  # "triton" or "torch": every op takes it on CUDA; unset: the faster, measured
MARGIN = 0.05  # torch's kernels replace the Triton kernel only when faster by more than this share

_choices: dict[tuple, str] = {}  # (op, shape class) -> "triton" | "torch"
_by_shape: dict[tuple, str] = {}  # (op, each argument's exact shape and dtype, or value) -> the choice: the per-call lookup


def _size_class(size: int) -> int:
    """A size rounded up to a power of two: one measurement stands for the class."""
    return 1 << max(size - 1, 0).bit_length()


def shape_class(args: Sequence) -> tuple:
    """What the measurement of an op's call stands for: each tensor's dtype and sizes rounded up to powers of
    two, each flag and name as it is; other numbers (eps, scale) do not change the speed."""
    key = []
    for arg in args:
        if isinstance(arg, torch.Tensor):
            key.append((arg.dtype, tuple(_size_class(size) for size in arg.shape)))
        elif arg is None or isinstance(arg, (bool, str)):
            key.append(arg)
        else:
            key.append(type(arg).__name__)
    return tuple(key)


def kernel(name: str, args: Sequence, triton: Callable, torch_version: Callable) -> str:
    """``"triton"`` or ``"torch"``: which of the two implementations op ``name`` runs on these CUDA inputs
    (see the module's doc). ``triton(*args)`` and ``torch_version(*args)`` compute the same outputs."""
    forced = os.environ.get(KERNELS_ENV, "").strip().lower()
    if forced in ("triton", "torch"):
        return forced
    exact = (name, *((arg.shape, arg.dtype) if isinstance(arg, torch.Tensor) else arg for arg in args))
    choice = _by_shape.get(exact)  # a third of shape_class's cost, on every call
    if choice is not None:
        return choice
    key = (name, shape_class(args))
    choice = _choices.get(key)
    if choice is None:
        if _capturing():
            return "triton"  # timing synchronises the device, which a CUDA graph's capture forbids
        choice = _choices[key] = faster({"triton": lambda: triton(*args), "torch": lambda: torch_version(*args)},
                                        calls=5, favoured="triton", margin=MARGIN, sync=_synchronize)
    _by_shape[exact] = choice
    return choice


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def choices() -> dict[tuple, str]:
    """The choices measured so far in this process: (op, shape class) -> ``"triton"`` or ``"torch"``."""
    return dict(_choices)


def report() -> str:
    """The GPU and each op's choices so far, as text (``minipt info`` prints it where there is a GPU)."""
    if not torch.cuda.is_available():
        return "CUDA: no GPU"
    forced = os.environ.get(KERNELS_ENV, "").strip().lower()
    lines = [f"CUDA: {torch.cuda.get_device_name()} (compute capability {'.'.join(map(str, torch.cuda.get_device_capability()))})",
             "  minipt.ops on CUDA: " + (f"{forced} for every op ({KERNELS_ENV})" if forced in ("triton", "torch") else
                                         "the Triton kernel or torch's kernels, the faster per op and shape class, measured at first use")]
    for (name, shape), choice in sorted(_choices.items(), key=lambda item: item[0][0]):
        sizes = ", ".join("x".join(map(str, arg[1])) + f" {str(arg[0]).removeprefix('torch.')}" for arg in shape if isinstance(arg, tuple))
        lines.append(f"    {name} ({sizes}): {choice}")
    return "\n".join(lines)
