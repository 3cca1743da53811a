"""Small Triton helpers the kernels share. Imported only by the kernel modules, so only when a kernel runs."""

import triton
import triton.language as tl


@triton.jit
def tanh(x):
    """tanh from one exponential, stable for either sign: e = exp(-2|x|) lies in (0, 1]."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def dot(a, b, EXACT: tl.constexpr):
    """a @ b accumulated in float32. EXACT multiplies in float32 as well: float32 inputs on a GPU
    (no TF32 rounding), and every input under the interpreter, whose dot on bfloat16 is wrong."""
    if EXACT:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        acc = tl.dot(a, b)
    return acc


def exact_dot(tensor) -> bool:
    """The EXACT flag of ``dot`` for a launch on ``tensor``: float32 data, or a CPU tensor (the interpreter)."""
    import torch

    return tensor.dtype == torch.float32 or not tensor.is_cuda
