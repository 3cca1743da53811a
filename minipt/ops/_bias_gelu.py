"""Bias add + GELU (Hendrycks & Gimpel, 2016) as one torch op, ``minipt::bias_gelu``.

    out = gelu(x + bias)      x (..., N), bias (N,)

The feed-forward block's first Linear is run without its bias and this op adds it, so that the
sum x + bias is never written to memory. ``approximate`` is "none" (the exact erf form, BERT) or
"tanh" (GPT-2's "gelu_new").

- everywhere but CUDA: ``bias_gelu_reference`` (torch's gelu on the sum, in float32 at least); on the
  CPU, the backward in float32 takes d gelu from aten's one-pass ``gelu_backward``;
- CUDA: ``_bias_gelu_triton``. The backward, ``minipt::bias_gelu_backward``, is split the same way.

``takes_bias(device)`` says where a Linear should leave its bias to the op: only where the kernel runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from ._layout import empty_like
from ._register import KERNEL_DEVICE, register_op


def takes_bias(device: torch.device | str) -> bool:
    """Whether a Linear before ``bias_gelu`` on ``device`` should leave its bias to the op: on CUDA, where the
    kernel adds it in the pass that applies GELU and the biased pre-activation is never written. Elsewhere the
    op is its reference, an add and then GELU, which costs a pass over (N, 4H) forward and another backward
    that a matmul adding its own bias does not (DistilBERT-base's training step 16x128 on the CPU: 65 ms)."""
    return torch.device(device).type == KERNEL_DEVICE


def bias_gelu_reference(x: Tensor, bias: Tensor, approximate: str) -> Tensor:
    compute = torch.promote_types(x.dtype, torch.float32)
    return F.gelu(x.to(compute) + bias.to(compute), approximate=approximate).to(x.dtype)


def gelu_grad(y: Tensor, approximate: str) -> Tensor:
    """d gelu(y) / dy, written out."""
    if approximate == "tanh":
        k = math.sqrt(2.0 / math.pi)
        t = torch.tanh(k * (y + 0.044715 * y.pow(3)))
        return 0.5 * (1.0 + t) + 0.5 * y * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * y * y)
    cdf = 0.5 * (1.0 + torch.erf(y / math.sqrt(2.0)))  # Phi(y)
    return cdf + y * torch.exp(-0.5 * y * y) / math.sqrt(2.0 * math.pi)  # + y phi(y)


def bias_gelu_backward_reference(grad: Tensor, x: Tensor, bias: Tensor, approximate: str) -> tuple[Tensor, Tensor]:
    compute = torch.promote_types(x.dtype, torch.float32)
    y = x.to(compute) + bias.to(compute)
    grad_x = grad.to(compute) * gelu_grad(y, approximate)
    return grad_x.to(x.dtype), grad_x.reshape(-1, x.shape[-1]).sum(0).to(bias.dtype)


def bias_gelu_backward_cpu(grad: Tensor, x: Tensor, bias: Tensor, approximate: str) -> tuple[Tensor, Tensor]:
    """The reference's gradients with d gelu from aten's one-pass CPU kernel ``gelu_backward``."""
    if not x.dtype == grad.dtype == bias.dtype == torch.float32:
        return bias_gelu_backward_reference(grad, x, bias, approximate)
    grad_x = torch.ops.aten.gelu_backward(grad, x + bias, approximate=approximate)
    return grad_x, grad_x.reshape(-1, x.shape[-1]).sum(0)


bias_gelu_backward_op, bias_gelu_backward_triton = register_op(
    "bias_gelu_backward", bias_gelu_backward_reference, kernel="_bias_gelu_triton.backward", aten=bias_gelu_backward_cpu,
    fake=lambda grad, x, bias, approximate: (empty_like(x), empty_like(bias)),
)


def _grads(grads, inputs, outputs):
    x, bias, approximate = inputs
    return (*bias_gelu_backward_op(grads[0], x, bias, approximate), None)


bias_gelu_op, bias_gelu_triton = register_op(
    "bias_gelu", bias_gelu_reference, kernel="_bias_gelu_triton.forward",
    fake=lambda x, bias, approximate: empty_like(x), backward=_grads,
)


def bias_gelu(x: Tensor, bias: Tensor, approximate: str = "none") -> Tensor:
    """``gelu(x + bias)``: x (..., N), bias (N,)."""
    if approximate not in ("none", "tanh"):
        raise InputError(f"GELU approximation must be 'none' or 'tanh', not {approximate!r}")
    if bias.dim() != 1 or x.dim() == 0 or bias.shape[0] != x.shape[-1]:
        raise InputError(f"bias must have shape ({x.shape[-1] if x.dim() else '?'},) to add to x {tuple(x.shape)}; "
                         f"got {tuple(bias.shape)}")
    if x.dtype != bias.dtype or not x.is_floating_point():
        raise InputError(f"x and bias must share one floating dtype; got {x.dtype} and {bias.dtype}")
    return bias_gelu_op(x, bias, approximate)
