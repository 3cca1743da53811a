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


def rows(t):
    """``t`` with unit stride along its last dimension (a copy only where it has not)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def gate_launch(t, B: int, H: int):
    """(grid, block sizes) of the recurrent gate kernels, one program per (BLOCK_B, BLOCK_H) tile of the
    (B, H) state ``t``: few large programs under the interpreter, tiles of at most 2048 elements on a GPU."""
    block_h = min(256, triton.next_power_of_2(H))
    if t.is_cuda:
        blocks = dict(BLOCK_B=max(1, min(triton.next_power_of_2(B), 2048 // block_h)), BLOCK_H=block_h, num_warps=4)
    else:
        blocks = dict(BLOCK_B=min(64, triton.next_power_of_2(B)), BLOCK_H=block_h)
    return (triton.cdiv(B, blocks["BLOCK_B"]), triton.cdiv(H, blocks["BLOCK_H"])), blocks
